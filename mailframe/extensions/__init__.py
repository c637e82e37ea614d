"""
ESMTP extensions, each an L{mailframe.interfaces.IExtension} provider.
"""

from mailframe.extensions._base import Extension
from mailframe.extensions.builtin import (
    SMTPUTF8,
    BinaryMIME,
    Chunking,
    EightBitMIME,
    EnhancedStatusCodes,
    Pipelining,
    Size,
    defaultExtensions,
)

__all__ = [
    "SMTPUTF8",
    "BinaryMIME",
    "Chunking",
    "EightBitMIME",
    "EnhancedStatusCodes",
    "Extension",
    "Pipelining",
    "Size",
    "defaultExtensions",
]
