"""
C{mailframe-passwd FILE USER}: add a user to a mailframe password file,
change a password (read twice from the terminal, or once from standard
input with C{--stdin}), or remove a user (C{-d}).

Owns: the command line.  The file format and hashing are
L{mailframe.auth.passwords}'s.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from mailframe.auth.passwords import (
    DEFAULT_SCRAM_ITERATIONS,
    checkUsername,
    makeEntry,
    updatePasswordFile,
)

__all__ = ["main"]


def _readPassword(fromStdin: bool) -> str:
    if fromStdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    """C{mailframe-passwd FILE USER}: add a user or change a password."""
    parser = argparse.ArgumentParser(
        prog="mailframe-passwd",
        description="Add a user to a mailframe password file or change a password "
        "(for --auth mailframe:FILE).",
    )
    parser.add_argument("file")
    parser.add_argument("user")
    parser.add_argument("-d", "--delete", action="store_true", help="remove the user")
    parser.add_argument(
        "--stdin", action="store_true", help="read the password from one line of standard input"
    )
    parser.add_argument(
        "--scram-iterations",
        type=int,
        default=DEFAULT_SCRAM_ITERATIONS,
        help=f"PBKDF2 rounds of the SCRAM-SHA-256 keys (default {DEFAULT_SCRAM_ITERATIONS})",
    )
    parser.add_argument(
        "--no-scram", action="store_true", help="store only the argon2 hash (no SCRAM-SHA-256)"
    )
    args = parser.parse_args(argv)
    try:
        checkUsername(args.user)
        entry = None
        if not args.delete:
            password = _readPassword(args.stdin)
            iterations = None if args.no_scram else args.scram_iterations
            entry = makeEntry(args.user, password, iterations)
        outcome = updatePasswordFile(args.file, args.user, entry)
    except (OSError, ValueError) as e:
        message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"mailframe-passwd: {message}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("mailframe-passwd: cancelled", file=sys.stderr)
        return 1
    print(f"mailframe-passwd: {outcome} {args.user} in {args.file}")
    return 0
