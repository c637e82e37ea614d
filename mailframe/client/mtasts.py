"""
MTA-STS (RFC 8461): the C{_mta-sts.DOMAIN} TXT record (L{parseRecord}),
the policy (L{parsePolicy}, L{STSPolicy}; which MX hosts it names:
L{mxMatches}), fetching it from C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt}
(L{fetchPolicy}: the certificate verified, no redirects, at most 64 KiB,
within a time limit) and L{MTASTS}, which answers C{policyFor(domain)} from
a cache kept on disk (one JSON file per domain in the state directory), so
that a policy survives restarts, and refetches a policy when the record's
id changes or before it expires.

RFC 8461 5.1 as done here: the TXT record is looked up for every delivery
(the process's DNS cache answers most); when it names the id of the cached
policy, that one is used; when it names another id, or nothing is cached,
the policy is fetched, and a failed fetch leaves the cached policy (if any,
unexpired) in force.  No record and no cached policy: no policy.  A cached
policy is used until its max_age passes even if the record disappears.

Owns: the syntax of the record and the policy, the fetch and the cache.
Must not: decide what to do with a host (L{mailframe.client.tlspolicy}
does), or block: files are small and read and written once per policy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = [
    "ENFORCE",
    "MAX_POLICY_SIZE",
    "MTASTS",
    "NONE",
    "TESTING",
    "PolicyError",
    "STSLookup",
    "STSPolicy",
    "fetchPolicy",
    "mxMatches",
    "parsePolicy",
    "parseRecord",
    "policyURL",
]

log = Logger(namespace="mailframe.mtasts")

ENFORCE = "enforce"
TESTING = "testing"
NONE = "none"
MAX_POLICY_SIZE = 64 * 1024
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: at most one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_FIELD = re.compile(r"([A-Za-z0-9_.-]+)=([\x21-\x3a\x3c\x3e-\x7e]{1,32})\Z")


class PolicyError(ValueError):
    """A record or policy that cannot be used; its text says why, in one line."""


def parseRecord(records: Iterable[bytes]) -> str | None:
    """
    The policy id of the C{_mta-sts} TXT records (each one's strings
    joined), or None when there is no usable one: exactly one record must
    start with C{v=STSv1;} (RFC 8461 3.1; several means none).

    @raise PolicyError: the one STSv1 record is malformed.
    """
    found = [r for r in records if r.startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    try:
        text = found[0].decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("the _mta-sts record is not ASCII") from None
    fields: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        match = _FIELD.match(part)
        if match is None:
            raise PolicyError(f"bad field {part[:40]!r} in the _mta-sts record")
        fields.setdefault(match.group(1), match.group(2))
    if fields.get("v") != "STSv1":
        raise PolicyError("the _mta-sts record does not start with v=STSv1")
    policyId = fields.get("id", "")
    if not _ID.match(policyId):
        raise PolicyError("the _mta-sts record has no valid id")
    return policyId


@dataclass(frozen=True)
class STSPolicy:
    """
    One domain's policy: C{mode} (L{ENFORCE}, L{TESTING} or L{NONE}), the
    C{mx} patterns, C{maxAge} seconds, the C{id} of the record it was
    fetched for, and when it was C{fetched} (seconds since the epoch).
    """

    domain: str
    mode: str
    mx: tuple[str, ...]
    maxAge: int
    id: str
    fetched: float

    @property
    def expires(self) -> float:
        return self.fetched + self.maxAge

    def matches(self, host: str) -> bool:
        """True if the MX host C{host} is one the policy names."""
        return any(mxMatches(pattern, host) for pattern in self.mx)

    def toJSON(self) -> dict[str, Any]:
        data = asdict(self)
        data["mx"] = list(self.mx)
        return data

    @classmethod
    def fromJSON(cls, data: dict[str, Any]) -> STSPolicy:
        return cls(
            str(data["domain"]),
            str(data["mode"]),
            tuple(str(m) for m in data["mx"]),
            int(data["maxAge"]),
            str(data["id"]),
            float(data["fetched"]),
        )


def mxMatches(pattern: str, host: str) -> bool:
    """
    RFC 8461 4.1: C{pattern} is a host name, or a wildcard (an asterisk and
    a dot, then a domain) matching exactly one more label at the left; case
    does not matter.
    """
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label and dot) and rest == pattern[2:]
    return pattern == host


def parsePolicy(text: str, domain: str, policyId: str, now: float) -> STSPolicy:
    """
    The L{STSPolicy} in C{text} (RFC 8461 3.2: C{key: value} lines, CRLF or
    LF; version, mode, max_age, and mx lines unless the mode is none).

    @raise PolicyError: what is wrong, in one line.
    """
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"bad policy line {line[:40]!r}")
        key, value = key.strip(), value.strip(" \t")
        if key == "mx":
            mx.append(value)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("the policy has no version: STSv1")
    mode = fields.get("mode", "")
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyError(f"the policy's mode {mode[:20]!r} is not enforce, testing or none")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError("the policy has no valid max_age")
    if mode != NONE and not mx:
        raise PolicyError("the policy names no mx")
    for pattern in mx:
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", pattern):
            raise PolicyError(f"bad mx pattern {pattern[:60]!r}")
    return STSPolicy(domain.lower(), mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), policyId, now)


def policyURL(domain: str) -> str:
    """C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt}."""
    return f"https://mta-sts.{domain.rstrip('.').lower()}/.well-known/mta-sts.txt"


async def fetchPolicy(
    reactor: Any,
    domain: str,
    *,
    trustRoot: Any = None,
    timeout: float = 30.0,
    url: str | None = None,
    agent: Any = None,
    address: tuple[str, int] | None = None,
) -> str:
    """
    The text of C{domain}'s policy, fetched with treq: the server's
    certificate must be valid for C{mta-sts.DOMAIN} (C{trustRoot}: the CAs,
    None for the platform's), a 200 with a C{text/plain} body of at most
    L{MAX_POLICY_SIZE} octets, no redirect followed, within C{timeout}
    seconds.  C{agent} replaces the Twisted web agent; C{address}
    (C{(host, port)}, for tests) is where to connect instead of the URL's
    host, whose name the certificate must still carry.

    @raise PolicyError: why there is no policy text, in one line.
    """
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    if agent is None:
        policy = BrowserLikePolicyForHTTPS(trustRoot)
        if address is None:
            agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout)
        else:
            agent = Agent.usingEndpointFactory(
                reactor, _FixedAddress(reactor, policy, address, timeout)
            )
    client = HTTPClient(agent)
    location = url or policyURL(domain)
    body = bytearray()
    done: defer.Deferred[Any]

    def collect(data: bytes) -> None:
        body.extend(data)
        if len(body) > MAX_POLICY_SIZE:
            raise PolicyError(f"the policy is larger than {MAX_POLICY_SIZE} octets")

    try:
        d = client.get(location, allow_redirects=False, timeout=timeout)
        d.addTimeout(timeout, reactor)
        response = await d
        if response.code != 200:
            raise PolicyError(f"{location} answered HTTP {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if not kind.lower().startswith(b"text/plain"):
            raise PolicyError(f"{location} is not text/plain")
        done = treq.collect(response, collect)
        done.addTimeout(timeout, reactor)
        await done
    except PolicyError:
        raise
    except Exception as e:
        text = " ".join(str(getattr(e, "reasons", None) or e).split())[:160]
        raise PolicyError(
            f"fetching {location} failed: {type(e).__name__} {text}".rstrip()
        ) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{location} is not UTF-8") from None


class _FixedAddress:
    """An endpoint factory for twisted.web's Agent: TLS for the URL's host, to one address."""

    def __init__(self, reactor: Any, policy: Any, address: tuple[str, int], timeout: float):
        self.reactor, self.policy, self.address, self.timeout = reactor, policy, address, timeout

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            wrapClientTLS,
        )

        host, port = self.address
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        tcp = kind(self.reactor, host, port, timeout=self.timeout)
        return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tcp)


async def fetchResolved(
    reactor: Any,
    domain: str,
    addresses: Callable[[str], Any] | None,
    trustRoot: Any = None,
    timeout: float = 30.0,
    port: int = 443,
) -> str:
    """
    L{fetchPolicy}, connecting to the addresses of C{mta-sts.DOMAIN} that
    C{addresses} finds (the first two, in turn; C{port}: 443, another in
    tests), or with the reactor's own name resolution when C{addresses} is
    None.

    @raise PolicyError: why there is no policy text.
    """
    if addresses is None:
        return await fetchPolicy(reactor, domain, trustRoot=trustRoot, timeout=timeout)
    host = "mta-sts." + domain.rstrip(".").lower()
    try:
        found = list(await addresses(host))
    except Exception as e:
        raise PolicyError(f"cannot find the address of {host}: {e}") from None
    if not found:
        raise PolicyError(f"{host} has no address")
    error: PolicyError | None = None
    for address in found[:2]:
        try:
            return await fetchPolicy(reactor, domain, trustRoot=trustRoot, timeout=timeout,
                                     address=(address, port))  # fmt: skip
        except PolicyError as e:
            error = e
            if "answered HTTP" in str(e) or "text/plain" in str(e) or "larger" in str(e):
                break  # the server answered: another address would answer the same
    assert error is not None
    raise error


@dataclass(frozen=True)
class STSLookup:
    """
    What L{MTASTS.policyFor} found: the C{policy} in force (None: none), and
    C{error}, a line saying why a policy could not be had (a fetch or parse
    failure, reported as C{sts-policy-fetch-error} or C{sts-policy-invalid}
    by TLS reporting), with C{errorType} its RFC 8460 result type.
    """

    policy: STSPolicy | None
    error: str | None = None
    errorType: str | None = None


class MTASTS:
    """
    MTA-STS policies for MX delivery.  C{txt(name)} returns a Deferred of the
    TXT records of C{name} (L{mailframe.policy._dns.AsyncDNS.txt}); C{fetch(domain)}
    a Deferred (or coroutine) of the policy text (by default L{fetchPolicy}
    with the reactor, to the addresses of C{mta-sts.DOMAIN} that
    C{addresses(name)} gives, a Deferred of a list: the process's resolver;
    None: the reactor's own); C{clock} tells the time; C{stateDirectory} keeps
    the policies (None: in memory only); C{skip} lists domains for which
    MTA-STS is off; C{refreshBefore}: a policy whose max_age ends within
    this many seconds is fetched again in the background when used.
    """

    def __init__(
        self,
        txt: Callable[[str], Any],
        clock: IReactorTime,
        *,
        fetch: Callable[[str], Any] | None = None,
        reactor: Any = None,
        trustRoot: Any = None,
        addresses: Callable[[str], Any] | None = None,
        stateDirectory: str | None = None,
        skip: Sequence[str] = (),
        refreshBefore: float = 86400.0,
        timeout: float = 30.0,
    ) -> None:
        self.txt = txt
        self.clock = clock
        if fetch is None:

            async def fetch(domain: str) -> str:
                return await fetchResolved(reactor, domain, addresses, trustRoot, timeout)

        self.fetch = fetch
        self.stateDirectory = stateDirectory
        self.skip = frozenset(d.strip().rstrip(".").lower() for d in skip)
        self.refreshBefore = refreshBefore
        self._policies: dict[str, STSPolicy | None] = {}
        self._fetching: dict[str, defer.Deferred[STSLookup]] = {}

    def enabledFor(self, domain: str) -> bool:
        """False for a domain (or a subdomain of one) listed in C{skip}."""
        domain = domain.rstrip(".").lower()
        labels = domain.split(".")
        return not any(".".join(labels[i:]) in self.skip for i in range(len(labels)))

    # -- the cache ----------------------------------------------------------------

    def _path(self, domain: str) -> str | None:
        if self.stateDirectory is None:
            return None
        safe = re.sub(r"[^a-z0-9.-]", "_", domain)
        return os.path.join(self.stateDirectory, "mta-sts", safe + ".json")

    def cached(self, domain: str) -> STSPolicy | None:
        """The policy kept for C{domain}, if unexpired (read from disk the first time)."""
        if domain not in self._policies:
            self._policies[domain] = self._load(domain)
        policy = self._policies[domain]
        if policy is not None and policy.expires <= self.clock.seconds():
            return None
        return policy

    def _load(self, domain: str) -> STSPolicy | None:
        path = self._path(domain)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return STSPolicy.fromJSON(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warn("MTA-STS: ignoring the cached policy {path}: {e}", path=path, e=e)
            return None

    def _store(self, policy: STSPolicy) -> None:
        self._policies[policy.domain] = policy
        path = self._path(policy.domain)
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(policy.toJSON(), f)
            os.replace(temporary, path)
        except OSError as e:
            log.warn("MTA-STS: cannot keep the policy of {domain} in {path}: {e}",
                     domain=policy.domain, path=path, e=e)  # fmt: skip

    # -- lookups --------------------------------------------------------------------

    def policyFor(self, domain: str) -> defer.Deferred[STSLookup]:
        """The policy in force for C{domain} (an L{STSLookup}); never fails."""
        return defer.ensureDeferred(self._policyFor(domain.rstrip(".").lower()))

    async def _policyFor(self, domain: str) -> STSLookup:
        if not self.enabledFor(domain):
            return STSLookup(None)
        cached = self.cached(domain)
        try:
            records = await self.txt(f"_mta-sts.{domain}")
            policyId = parseRecord(records)
        except PolicyError as e:
            return STSLookup(cached, str(e) if cached is None else None, "sts-policy-invalid")
        except Exception as e:  # DNS failed for now: a cached policy stays in force
            log.info("MTA-STS: TXT lookup for {domain} failed: {e}", domain=domain, e=e)
            return STSLookup(cached)
        if policyId is None:
            return STSLookup(cached)
        if cached is not None and cached.id == policyId:
            if cached.expires - self.clock.seconds() < self.refreshBefore:
                self._refresh(domain, policyId)  # in the background; the cached one serves
            return STSLookup(cached)
        found = await self._refresh(domain, policyId)
        if found.policy is None and cached is not None:
            return STSLookup(cached, found.error, found.errorType)
        return found

    def _refresh(self, domain: str, policyId: str) -> defer.Deferred[STSLookup]:
        """Fetch C{domain}'s policy once at a time; the result is kept."""
        pending = self._fetching.get(domain)
        if pending is None:
            pending = defer.ensureDeferred(self._fetch(domain, policyId))
            self._fetching[domain] = pending
            pending.addBoth(self._fetched, domain)
        result: defer.Deferred[STSLookup] = defer.Deferred()

        def tell(found: STSLookup) -> STSLookup:
            result.callback(found)
            return found

        pending.addCallback(tell)  # _fetch never fails
        return result

    def _fetched(self, result: Any, domain: str) -> Any:
        self._fetching.pop(domain, None)
        return result

    async def _fetch(self, domain: str, policyId: str) -> STSLookup:
        try:
            text = await defer.ensureDeferred(_awaitable(self.fetch(domain)))
        except Exception as e:
            why = str(e) if isinstance(e, PolicyError) else f"{type(e).__name__}: {e}"
            log.info("MTA-STS: no policy for {domain}: {why}", domain=domain, why=why)
            return STSLookup(None, why, "sts-policy-fetch-error")
        try:
            policy = parsePolicy(str(text), domain, policyId, self.clock.seconds())
        except PolicyError as e:
            log.info("MTA-STS: bad policy for {domain}: {e}", domain=domain, e=e)
            return STSLookup(None, str(e), "sts-policy-invalid")
        self._store(policy)
        log.info("MTA-STS: policy {id} of {domain}: mode {mode}, mx {mx}, max_age {age}",
                 id=policy.id, domain=domain, mode=policy.mode, mx=" ".join(policy.mx),
                 age=policy.maxAge)  # fmt: skip
        return STSLookup(policy)


async def _awaitable(value: Any) -> Any:
    if isinstance(value, defer.Deferred):
        return await value
    if hasattr(value, "__await__"):
        return await value
    return value
