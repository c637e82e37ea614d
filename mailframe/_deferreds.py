"""
Plug points may answer with a plain value or a Deferred.  These helpers let
callers handle both on one path, and take a Deferred that has already fired
synchronously: the common case of a synchronous plug point then costs no
callback machinery.

Owns: nothing but that.  Must not: import anything of mailframe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["always", "settled", "then"]

_Deferred = defer.Deferred


def settled(result: Any) -> Any:
    """
    A Deferred that has already fired with a plain value (and is not paused,
    so its callbacks have all run) is replaced by that value; anything else
    is returned as it is.  Only public API: a callback that keeps the
    result reads it, and runs at once exactly when the Deferred has settled.
    """
    if type(result) is _Deferred and result.called:
        box: list[Any] = []
        result.addBoth(_keep, box)
        if box and type(box[0]) is not Failure:
            return box[0]
    return result


def _keep(result: Any, box: list[Any]) -> Any:
    box.append(result)
    return result


def then(result: Any, f: Callable[..., Any], *args: Any) -> Any:
    """C{f(result, *args)} now for a plain value, or when a Deferred succeeds."""
    result = settled(result)
    if isinstance(result, _Deferred):
        return result.addCallback(f, *args)
    return f(result, *args)


def always(result: Any, f: Callable[..., Any], *args: Any) -> None:
    """C{f(result, *args)} now for a plain value, or when a Deferred fires (a Failure too)."""
    result = settled(result)
    if isinstance(result, _Deferred):
        result.addBoth(f, *args)
    else:
        f(result, *args)
