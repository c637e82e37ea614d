"""Sphinx configuration for mailframe's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "mailframe"
author = "The mailframe developers"
copyright = "2026, The mailframe developers"

from mailframe import __version__ as release  # noqa: E402

version = release
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
intersphinx_mapping = {}
nitpicky = False
suppress_warnings = ["ref.python"]


def setup(app):
    """
    Generate, from the code, before reading sources: the state machine page,
    and the settings and plug-in reference that configuration.rst includes.
    """
    sys.path.insert(0, os.path.dirname(__file__))
    import statemachine

    from mailframe.app import reference

    generated = os.path.join(os.path.dirname(__file__), "_generated")
    statemachine.write(generated)
    reference.write(generated)
