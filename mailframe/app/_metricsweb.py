"""
Serving Prometheus metrics on twisted.web, in the reactor thread:
L{MetricsResource} renders a registry at each GET (the Prometheus text
format, or OpenMetrics when the Accept header asks for it, gzip'd when
Accept-Encoding allows), L{metricsSite} puts it at C{/metrics}, and
L{metricsService} listens on an endpoint string.

prometheus-client's own C{prometheus_client.twisted.MetricsResource} is a
WSGI resource: each scrape would run in the reactor's thread pool, reading
counters and the queue while the reactor changes them.  This one renders in
the reactor thread, with the public encoders of prometheus-client.

Owns: HTTP.  Must not: know what the metrics mean (L{mailframe.app.metrics}).
"""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text
from prometheus_client.openmetrics import exposition as openmetrics
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from twisted.application.service import IService

__all__ = ["MetricsResource", "metricsService", "metricsSite", "workerEndpoint"]

_INDEX = b"""<!DOCTYPE html>
<html><head><title>mailframe metrics</title></head>
<body><p>mailframe's Prometheus metrics are at <a href="metrics">/metrics</a>.</p></body></html>
"""


def _accepts(header: str, mediaType: str) -> bool:
    """Whether an Accept header names C{mediaType} (with a quality above 0)."""
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0].lower() != mediaType:
            continue
        quality = next((f[2:] for f in fields[1:] if f.lower().startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            return True
    return False


class MetricsResource(Resource):
    """The metrics of C{registry}, rendered at each GET (and HEAD)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader("accept") or "").lower()
        registry: Any = self.registry
        names = [n.decode("utf-8", "replace") for n in (request.args or {}).get(b"name[]", [])]
        if names:
            registry = registry.restricted_registry(names)
        if _accepts(accept, "application/openmetrics-text"):
            output = openmetrics.generate_latest(registry)
            contentType = openmetrics.CONTENT_TYPE_LATEST
        else:
            output = text.generate_latest(registry)
            contentType = text.CONTENT_TYPE_PLAIN_0_0_4
        request.setHeader("content-type", contentType)
        request.setHeader("cache-control", "no-store")
        if "gzip" in (request.getHeader("accept-encoding") or "").lower():
            output = gzip.compress(output, compresslevel=6)
            request.setHeader("content-encoding", "gzip")
        return output


class _Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", "text/html; charset=utf-8")
        return _INDEX


class _QuietSite(Site):
    """A Site that writes no access log line per request (a scrape a second would fill it)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def metricsSite(registry: CollectorRegistry) -> Site:
    """A twisted.web Site with C{registry}'s metrics at C{/metrics} (and a pointer at C{/})."""
    root = _Index()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"", _Index())
    return _QuietSite(root)


def workerEndpoint(reactor: Any, description: str, worker: int) -> Any:
    """
    The endpoint of worker C{worker}'s metrics: C{description} itself for
    worker 0, for the others a C{tcp:} or C{tcp6:} endpoint's port plus the
    worker's index (each process serves its own counts).

    @raise ValueError: another kind of endpoint, or port 0, with workers.
    """
    from twisted.internet.endpoints import (
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
        serverFromString,
    )

    from mailframe.app.endpoints import tcpListenAddress

    address = tcpListenAddress(description)  # ValueError: not tcp
    if address.port == 0:
        raise ValueError("with workers, the metrics endpoint needs a fixed port")
    if worker == 0:
        return serverFromString(reactor, description)
    import socket

    kind = TCP6ServerEndpoint if address.family == socket.AF_INET6 else TCP4ServerEndpoint
    return kind(reactor, address.port + worker, address.backlog, address.interface)


def metricsService(
    reactor: Any, description: str, registry: CollectorRegistry, worker: int | None = None
) -> IService:
    """
    A service that serves C{registry}'s metrics on the server endpoint
    C{description}; with C{worker} (an index, under C{--workers}), on its
    port plus that index (L{workerEndpoint}).
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.application.strports import service

    site = metricsSite(registry)
    if worker is None:
        return service(description, site, reactor=reactor)
    endpoint = workerEndpoint(reactor, description, worker)
    listening = StreamServerEndpointService(endpoint, site)
    listening._raiseSynchronously = True
    return listening
