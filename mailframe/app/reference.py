"""
The settings reference of the docs, written from the table of settings
(L{mailframe.app.settings.SCHEMA}) and the declared options of the built-in
plug-ins, so that docs/configuration.rst cannot disagree with the code.

docs/conf.py calls L{write} at build time; it writes one reST file per part
of the reference into C{docs/_generated/}, which configuration.rst includes
between its hand-written paragraphs.  C{python -m mailframe.app.reference}
prints them.

Must not: import the reactor or a provider module at import time.
"""

from __future__ import annotations

import os
import textwrap

from zope.interface.interface import InterfaceClass

from mailframe.app import registry
from mailframe.app.settings import COMMAND, FILE, FLAG, LIST, SCHEMA, SECTIONS, TOP, Setting
from mailframe.interfaces import IDeliveryBackend, IRecipientValidator
from mailframe.plugins import FILTER_KINDS, Option

__all__ = ["PLUGIN_PARTS", "render", "renderPlugIns", "write"]

#: The parts of the plug-in reference: (name, the kinds of plug-in in it).
PLUGIN_PARTS: tuple[tuple[str, tuple[InterfaceClass, ...]], ...] = (
    ("backends", (IDeliveryBackend,)),
    ("validators", (IRecipientValidator,)),
    ("checks", FILTER_KINDS),
)


def _paragraph(text: str, indent: str = "    ") -> list[str]:
    return textwrap.wrap(
        text, width=78, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _default(option: Option) -> str:
    """C{Default: ``35M``.} for a value; a computed default in words."""
    text = option.defaultText
    words = option.shown is not None or text in ("none", "off")
    return f"Default: {text}." if words else f"Default: ``{text}``."


def _term(setting: Setting) -> str:
    """C{``listen`` (``--listen ENDPOINT``, repeatable; ``--port`` is the same)}."""
    notes = []
    if setting.form == FLAG:
        notes.append(f"``--{setting.name}``")
    elif setting.form != FILE:
        repeatable = ", repeatable" if setting.form == LIST else ""
        notes.append(f"``--{setting.name} {setting.placeholder}``{repeatable}")
    notes.extend(f"``--{alias}`` is the same" for alias in setting.aliases)
    if setting.form == FILE:
        notes.append("config file only")
    elif setting.form == COMMAND:
        notes.append("command line only")
    if setting.scope == TOP and setting.form != COMMAND:
        notes.append("top level only")
    return f"``{setting.name}`` ({'; '.join(notes)})"


def render(section: str) -> str:
    """The reST reference of the settings of one section of L{SECTIONS}."""
    lines: list[str] = []
    for setting in SCHEMA:
        if setting.section != section:
            continue
        lines.append(_term(setting))
        body = "  ".join(part for part in (setting.help, setting.details) if part)
        lines.extend(_paragraph(f"{body}  {_default(setting)}"))
    return "\n".join(lines) + "\n"


def renderPlugIns(kinds: tuple[InterfaceClass, ...]) -> str:
    """The reST reference of the built-in plug-ins of these kinds, with their options."""
    lines: list[str] = []
    for factory in registry.BUILTINS:
        if not any(factory.provides.isOrExtends(kind) for kind in kinds):
            continue
        lines.append(f"``{factory.synopsis}``")
        lines.extend(_paragraph(factory.description))
        for option in getattr(factory, "options", ()):
            lines.append("")
            lines.append(f"    ``{option.name}={option.placeholder}``")
            lines.extend(_paragraph(f"{option.help}  {_default(option)}", " " * 8))
        lines.append("")
    return "\n".join(lines)


def write(directory: str) -> None:
    """Write C{settings-SECTION.inc} and C{plugins-PART.inc} into C{directory}."""
    os.makedirs(directory, exist_ok=True)
    files = {f"settings-{name}.inc": render(name) for name, _ in SECTIONS}
    files.update({f"plugins-{name}.inc": renderPlugIns(kinds) for name, kinds in PLUGIN_PARTS})
    for name, text in files.items():
        target = os.path.join(directory, name)
        try:
            with open(target, encoding="utf-8") as f:
                if f.read() == text:
                    continue  # unchanged: Sphinx need not read the page again
        except OSError:
            pass
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    for name, title in SECTIONS:
        print(f"{title}\n{'-' * len(title)}\n\n{render(name)}")
    for name, kinds in PLUGIN_PARTS:
        print(f"{name}\n{'-' * len(name)}\n\n{renderPlugIns(kinds)}")
