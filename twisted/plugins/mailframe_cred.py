# The strcred checker factory of mailframe's password file, so that
# `--auth mailframe:PATH` works (twisted.cred.strcred finds ICheckerFactory
# dropins here).  mailframe.auth.passwords imports no hashing library until used.
from mailframe.auth.passwords import checkerFactory

__all__ = ["checkerFactory"]
