"""
Authentication on twisted.cred: the SASL mechanisms (C{sasl}), the
credentials and checkers they use (C{credentials}), and mailframe's
password file with argon2 hashes and SCRAM keys (C{passwords}).

Must not: import mailframe.server or mailframe.app.
"""
