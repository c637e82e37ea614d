"""
The security parts of C{twistd mailframe}'s listeners: TLS contexts, AUTH
checkers, the Authenticator of each set of checkers (the mechanisms every
one of them serves, and one secret for the fake SCRAM salts, so that
listeners do not disagree about who exists) and the AUTH failure limiter,
each built once and shared by every listener that needs it.

Owns: building those from a L{ListenerSpec}; a failure to build one is a
one-line C{SystemExit}.  Must not: import the reactor at import time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mailframe.app.config import ClientLimits, ListenerSpec
from mailframe.plugins import oneLine

if TYPE_CHECKING:
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.internet.interfaces import IReactorTime

    from mailframe.auth.credentials import Authenticator
    from mailframe.interfaces import IConnectionFilter, IExtension
    from mailframe.policy.authlimits import AuthFailureLimiter
    from mailframe.server.tls import ServerTLS

__all__ = ["Security"]


class Security:
    """
    Builds TLS contexts, AUTH checkers and the failure limiter once each, for
    every listener.  C{limiter}: the failure limiter to use (a reload keeps
    the one in force, with the clients it blocks); by default one is made.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        limits: ClientLimits,
        limiter: AuthFailureLimiter | None = None,
    ) -> None:
        self.reactor = reactor
        self.limits = limits
        self._contexts: dict[object, ServerTLS] = {}
        self._checkers: dict[str, ICredentialsChecker] = {}
        self._authenticators: dict[tuple[str, ...], Authenticator] = {}
        self._limiter: AuthFailureLimiter | None = limiter

    def forListener(
        self, spec: ListenerSpec
    ) -> tuple[list[IExtension], list[IConnectionFilter], ServerTLS | None]:
        """The extensions and connection filters of a listener, and its TLS context."""
        from mailframe.extensions import defaultExtensions

        extensions: list[IExtension] = defaultExtensions(spec.config.limits.messageSize)
        filters: list[IConnectionFilter] = []
        tls = self.context(spec) if spec.hasTLS else None
        if tls is not None and not spec.implicitTLS:
            from mailframe.extensions.starttls import StartTLS

            extensions.append(StartTLS(tls))
        if spec.auth:
            from mailframe.extensions.auth import Auth

            extensions.append(
                Auth(
                    self.authenticator(spec.auth),
                    self.reactor,
                    allowPlaintext=spec.authPlaintext,
                    limiter=self.limiter(),
                    maxFailures=spec.authFailures,
                    failureDelay=spec.authFailureDelay,
                )
            )
            filters.append(self.limiter())
        if spec.xclientNetworks:
            from mailframe.extensions.xclient import XClient

            extensions.append(XClient(spec.xclientNetworks))
        return extensions, filters, tls

    def context(self, spec: ListenerSpec) -> ServerTLS:
        from mailframe.server import tls

        pairs = spec.certificates
        if not pairs:
            key: object = ("self-signed", spec.config.hostname)
        else:
            key = pairs
        if key not in self._contexts:
            try:
                if not pairs:
                    path = tls.selfSignedCertificate(os.getcwd(), spec.config.hostname)
                    pairs = ((path, None),)
                self._contexts[key] = tls.ServerTLS(
                    [tls.CertificatePair(cert, keyFile) for cert, keyFile in pairs]
                )
            except (OSError, ValueError) as e:
                raise SystemExit(f"mailframe: cannot set up TLS: {oneLine(e)}")
        return self._contexts[key]

    def checker(self, description: str, setting: str = "auth") -> ICredentialsChecker:
        """The checker of C{description} (made once); a bad one exits naming C{setting}."""
        from twisted.cred import strcred

        if description not in self._checkers:
            try:
                self._checkers[description] = strcred.makeChecker(description)
            except Exception as e:
                kind = description.split(":", 1)[0]
                raise SystemExit(f"mailframe: cannot set up --{setting} {kind}: {oneLine(e)}")
        return self._checkers[description]

    def authenticator(self, descriptions: tuple[str, ...]) -> Authenticator:
        """The Authenticator of these checkers, in this order: one for every listener."""
        if descriptions not in self._authenticators:
            from mailframe.auth.credentials import Authenticator, makePortal

            portal = makePortal([self.checker(d) for d in descriptions])
            try:
                self._authenticators[descriptions] = Authenticator(portal)
            except ValueError as e:
                raise SystemExit(f"mailframe: cannot set up --auth: {oneLine(e)}")
        return self._authenticators[descriptions]

    def limiter(self) -> AuthFailureLimiter:
        if self._limiter is None:
            from mailframe.policy.authlimits import AuthFailureLimiter

            limits = self.limits
            self._limiter = AuthFailureLimiter(
                self.reactor, limits.failures, limits.window, limits.block
            )
        return self._limiter
