"""
The one table of C{twistd mailframe}'s settings (L{SCHEMA}): each setting's
name, converter, default, help, and where it applies.  The command line
(L{mailframe.app.tap.Options}), the TOML file (L{mailframe.app.config}),
the queue's and the relay's settings, C{--help} and the settings reference
of the docs (L{mailframe.app.reference}) are all made from it, so they
cannot disagree.

A setting has the same name on the command line (C{--max-size 50M}) and in
the file (C{max-size = "50M"}).  Its C{form} says how the command line takes
it: a value, a flag, a repeatable value (a list in the file), not at all
(L{FILE}: tables and secrets), or only there (L{COMMAND}).  Its C{scope}
says whether a C{[[listener]]} table may set it (L{LISTENER}) or only the
top level (L{TOP}).

Owns: the table and converting one setting (L{convert}).  Must not: import
the reactor or a provider module at import time; merge settings (that is
L{mailframe.app.config}'s job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailframe.app import converters as c
from mailframe.app.resolver import dnsServers
from mailframe.plugins import (
    Choice,
    Count,
    Duration,
    Networks,
    Option,
    SettingError,
    Size,
    YesNo,
)
from mailframe.queue.settings import DEFAULT_SPOOL
from mailframe.validators.factories import Separators

__all__ = [
    "COMMAND",
    "DEFAULTS",
    "DEFAULT_GREET_DELAY",
    "FILE",
    "FLAG",
    "LIST",
    "LISTENER",
    "SCHEMA",
    "SECTIONS",
    "SETTINGS",
    "TOP",
    "TOP_LEVEL_ONLY",
    "VALUE",
    "Setting",
    "SettingError",
    "convert",
]

#: Forms: C{--name VALUE}; C{--name}; C{--name VALUE} repeated (a list in the
#: file); in the file only; on the command line only.
VALUE, FLAG, LIST, FILE, COMMAND = "value", "flag", "list", "file", "command"
#: Scopes: a [[listener]] table may set it; the top level only.
LISTENER, TOP = "listener", "top"

#: The parts of the reference in the docs: (name, title).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("server", "Settings"),
    ("tls", "TLS and authentication"),
    ("checks", "Security checks"),
    ("queue", "The queue and relaying"),
    ("aliases", "Aliases and forwarding"),
)

#: The pregreet wait of a listener where MAIL needs no AUTH (port 25 style);
#: submission listeners wait 0 (their clients are people's mail programs).
#: Only a client's first connection waits: one that passed is remembered.
DEFAULT_GREET_DELAY = 1.0


@dataclass(frozen=True)
class Setting(Option):
    """
    One setting of C{twistd mailframe}: an L{Option} (name, converter,
    default, help) with its C{form} on the command line, its C{scope}, the
    C{section} of the docs it is in, C{details} for the docs only (reST),
    and other names of its option (C{aliases}).
    """

    form: str = VALUE
    scope: str = LISTENER
    section: str = "server"
    details: str = ""
    aliases: tuple[str, ...] = ()

    def describe(self, label: str, message: str) -> str:
        return f"{label}: {message}"


def _proxies() -> str:
    from mailframe.server.proxy import DEFAULT_TRUSTED

    return ", ".join(DEFAULT_TRUSTED)


def _limits() -> str:
    from mailframe.policy.factories import POLICY_FACTORIES

    [factory] = [f for f in POLICY_FACTORIES if f.prefix == "limits"]
    return "on: " + ", ".join(f"{o.name}={o.defaultText}" for o in factory.options)


def _webEndpoint(value: object) -> str:
    """An endpoint the console may listen on with a login (without one: checked in tap)."""
    from mailframe.web.api import checkWebEndpoint

    return checkWebEndpoint(c.string(value), login=True)


def _captureStore(value: object) -> str:
    """C{memory} or C{sqlite:PATH} (L{mailframe.web.capturedb.parseStore})."""
    from mailframe.web.capturedb import parseStore

    text = c.string(value).strip()
    parseStore(text)
    return text


def _metricsEndpoint(value: object) -> str:
    from mailframe.app.metrics import metricsEndpoint

    return metricsEndpoint(value)


_SECONDS = Duration()
_DELAY = Duration(zero=True)
_DURATION = Duration("a duration")
_SLOTS = Count(1, expected="a whole number of at least 1")

SCHEMA: tuple[Setting, ...] = (
    # -- the server -------------------------------------------------------------------
    Setting("listen", c.endpoints, ("tcp:2525:interface=127.0.0.1",),
            "Listen on this Twisted server endpoint (loopback only by default).",
            form=LIST, metavar="ENDPOINT", aliases=("port",), details=(
                "For example ``tcp:25``, ``tcp6:25``, ``unix:/run/mailframe.sock``, "
                "``systemd:domain=INET:index=0``.  ``haproxy:ENDPOINT`` listens behind a "
                "load balancer that sends the PROXY protocol header (HAProxy's v1 or v2): "
                "the session starts only once the header has been read (no greeting "
                "before it, 10 s to send it), and the client address in it is the one "
                "every check, log line and ``Received:`` field uses.  Only a proxy in "
                "``proxy-network`` is believed; any other peer is dropped unanswered.")),
    Setting("hostname", c.hostname, None,
            "The name in the 220 greeting, the EHLO reply and the Received: field.",
            shown="this host's fully qualified name", metavar="NAME"),
    Setting("domain", c.domains, (),
            "A local domain (a,b for two): mail for it is accepted, subject to the "
            "validators; mail for any other domain is relaying, refused with 550 5.7.1.",
            form=LIST, shown="localhost and the host name", metavar="NAME",
            details="``domains:`` validators add theirs."),
    Setting("validate", c.validate, ("any",),
            "A recipient validator, a plug-in description; they are asked in order.",
            form=LIST, metavar="DESCRIPTION", details=(
                "The first that accepts or refuses decides, and a recipient no validator "
                "accepts gets ``550 5.1.1``.")),
    Setting("deliver", c.deliver, "maildir:./Maildir",
            "The delivery backend, a plug-in description.", metavar="DESCRIPTION"),
    Setting("deliver-routes", c.deliverRoutes, {},
            "Per-domain delivery backends, a table of domain = plug-in description (a "
            "pipe: program for a list domain, say): mail for the domain (or, with a leading "
            "dot, its subdomains) goes to that backend instead of deliver; the domains "
            "become local.", form=FILE, details=(
                "For example ``\"lists.example.com\" = \"pipe:/usr/local/bin/list:${user}:"
                "user=list\"``.  With the queue, each recipient is retried or reported on "
                "its own.  See :doc:`pipe`.")),
    Setting("max-size", Size(), 35 << 20,
            "The largest message in octets (K, M, G are powers of 1024); 0 is no limit.",
            details="Advertised with SIZE."),
    Setting("max-recipients", Count(1), 1000,
            "The most recipients of a message; the extras get 452 4.5.3."),
    Setting("max-errors", Count(1), 20,
            "Error replies (4xx, 5xx) that end a session with 421 4.7.0; the count "
            "restarts after each accepted message."),
    Setting("timeout", _SECONDS, 300.0, "How long to wait for the next command.",
            details="RFC 5321 4.5.3.2.7 asks for at least 5 minutes."),
    Setting("data-timeout", _SECONDS, 300.0, "How long to wait for more message data."),
    Setting("bare-newlines", c.bareNewlines, "reject",
            "A bare CR or LF in message data: reject the message with 550 5.5.2 after "
            "its end, or normalise it to CRLF.", metavar="reject|normalise"),
    Setting("proxy-network", Networks(), (),
            "A load balancer (CIDR; a,b for two) whose PROXY header a haproxy: endpoint "
            "believes.", form=LIST, shown=_proxies, metavar="CIDR"),
    Setting("xclient-network", Networks(), (),
            "A front end (CIDR; a,b for two) that may name the client it speaks for with "
            "XCLIENT (Postfix's extension).", form=LIST, metavar="CIDR",
            shown="none: XCLIENT is offered to no one", details=(
                "The session then goes on as the named client's: relay networks, SPF, "
                "HELO checks, the Received field and the logs use its address.  The checks "
                "of the connection itself (limits, DNSBL, a milter's connect) ran for the "
                "front end.  See :ref:`xclient`.")),
    Setting("dns-server", dnsServers, (),
            "A DNS server (ADDRESS, ADDRESS:PORT or [IPV6]:PORT; a,b for two) that every "
            "check and MX routing ask, through one cache per process.", form=LIST, scope=TOP,
            metavar="ADDRESS[:PORT]", shown="those of resolv-conf", details=(
                "For a local caching or validating resolver on another port "
                "(``127.0.0.1:5353``).  Servers are asked in turn; ``/etc/hosts`` is "
                "read first for addresses.  Answers are kept for their TTL (at most a day), "
                "and \"no such name\" for the negative TTL of its zone (at most an hour).")),
    Setting("resolv-conf", c.path, None,
            "The resolv.conf(5) file whose nameserver lines (port 53) give the DNS servers, "
            "without dns-server.", scope=TOP, metavar="FILE", shown="/etc/resolv.conf",
            details="Read at start and at each reload (SIGHUP)."),
    Setting("workers", Count(1, 64), 1,
            "Processes serving the same tcp: listening ports (SO_REUSEPORT), to use "
            "every core.", form=COMMAND, scope=TOP, details=(
                "Python runs one core per process.  Each process binds its own socket "
                "with ``SO_REUSEPORT`` and the kernel spreads new connections over them.  "
                "The process ``twistd`` starts is worker 0: it serves too, starts the "
                "others with the same options, restarts one that dies (at most five times "
                "a minute) and stops them when it stops.  Needs ``tcp:`` or ``tcp6:`` "
                "endpoints with a fixed port.")),
    Setting("worker", Count(0), None,
            "Internal: the index of a worker process that worker 0 started.",
            form=COMMAND, scope=TOP),
    Setting("quiet", c.Boolean(), False,
            "No decision lines: no line per connection, refusal, message or delivery "
            "(start-up lines, warnings and errors are still logged).", form=FLAG, details=(
                "By default every decision gets one line (:doc:`logging`): the connection "
                "and its end with a count per command, TLS, AUTH, every refusal with its "
                "stage, client, HELO, sender, recipient, reply and deciding plug-in, every "
                "accepted message, and the queue's deliveries, deferrals and bounces.  The "
                "totals of the stop line are kept either way.")),
    Setting("transcript", c.Boolean(), False,
            "Debugging: log every session as a readable transcript (commands and "
            "replies; message contents are summarised, never logged).", form=FLAG),
    Setting("log-format", Choice("text", "json"), "text",
            "The log: twistd's text lines, or one JSON object per line per event.",
            scope=TOP, details=(
                "Either way the log goes where twistd's would (``--logfile``, standard "
                "output with ``-n``), through a buffer flushed every half second (at once "
                "for a warning or an error and mailframe's start-up, reload and stop lines, "
                "and at the end).  The JSON fields are stable: "
                "see :doc:`logging`.  twistd's ``--syslog`` or ``--logger`` replace it.")),
    Setting("metrics", _metricsEndpoint, None,
            "Serve Prometheus metrics at /metrics on this Twisted server endpoint "
            "(tcp:9025:interface=127.0.0.1, say).", scope=TOP, metavar="ENDPOINT",
            shown="none (no metrics)", details=(
                "Counters of connections, commands, replies, refusals, messages, TLS, AUTH "
                "and deliveries, plug-in latency, and the queue by state: see :doc:`metrics`.  "
                "Keep it on loopback or a private network: it is not authenticated.  With "
                "``workers``, worker K serves its own on the port plus K.")),
    Setting("capture", c.Boolean(), False,
            "Capture mode, for development: accept mail for every domain, never relay, "
            "and keep each message (see capture-store and --web).", form=FLAG, scope=TOP, details=(
                "Every recipient is accepted (no validator, no relay check) and every "
                "message goes to the capture store instead of ``deliver``; the queue "
                "settings (``spool``, ``relay-host``, ``routes``, ``relay``) are refused "
                "with it.  See :doc:`console`.")),
    Setting("capture-limit", Count(1), 1000,
            "Captured messages kept; the oldest is dropped first.", scope=TOP,
            metavar="COUNT"),
    Setting("capture-store", _captureStore, "memory",
            "Where captured messages are kept: memory (gone when mailframe stops) or "
            "sqlite:PATH, a SQLite file they survive a restart in.", scope=TOP,
            metavar="STORE", details=(
                "With ``sqlite:PATH`` the file (made if it is new; WAL mode) keeps the "
                "newest ``capture-limit`` messages, and only their index and the recently "
                "read ones are in memory.  A message the file cannot take is answered "
                "451; a file that is not a capture database, or of a newer mailframe, "
                "stops the start.  See :doc:`console`.")),
    Setting("capture-max-bytes", Size(), 256 << 20,
            "The octets of captured messages kept in memory (K, M, G are powers of 1024); "
            "beyond it the oldest are dropped; 0 is no limit.", scope=TOP, details=(
                "The newest message is always kept.  With ``capture-store sqlite:PATH`` it "
                "bounds the messages' bytes held in memory (the recently read ones): those "
                "left out are read from the file when asked for, and the file keeps "
                "``capture-limit`` messages.")),
    Setting("capture-mailbox", Choice("auth", "domain", "listener"), "auth",
            "Group captured messages in mailboxes by AUTH user (else recipient domain), "
            "by the first recipient's domain, or by listener.", scope=TOP),
    Setting("web", _webEndpoint, None,
            "Serve the web console and its REST API (live sessions, decisions, queue, "
            "statistics, settings, and the captured mail with capture) on this Twisted "
            "server endpoint (tcp:8025:interface=127.0.0.1, say).", scope=TOP,
            metavar="ENDPOINT", shown="none (no console)", details=(
                "Without ``web-auth`` there is no login, so only a loopback interface or a "
                "``unix:`` endpoint is accepted; with it, any endpoint (``ssl:`` for one "
                "reached over the network: a plain ``tcp:`` one off loopback is warned "
                "about at start).  Never port 25, 465 or 587.  One process only: not with "
                "``workers``.  See :doc:`console` and :doc:`webapi`.")),
    Setting("web-auth", c.authTypes, (),
            "A checker of the web console's logins, a Twisted strcred string as for auth "
            "(file:PATH, mailframe:PATH, memory:USER:PASS); with one, the console needs a "
            "login and may listen off loopback.", form=LIST, scope=TOP, metavar="DESCRIPTION",
            shown="none (no login: loopback only)", details=(
                "Asked in order, for a user name and password.  A failed login waits a "
                "second; ten failures from one address in ten minutes refuse it for a "
                "while.  Sessions are kept in memory (12 hours idle).")),
    Setting("web-decisions", Count(1), 1000,
            "Decision events the web console keeps for its decisions page.", scope=TOP,
            metavar="COUNT"),
    Setting("config", c.path, None, "Read settings from this TOML file.",
            form=COMMAND, scope=TOP, metavar="FILE"),
    # -- TLS and AUTH -----------------------------------------------------------------
    Setting("tls-cert", c.strings, (),
            "A PEM certificate file with its chain (certbot's fullchain.pem); the first "
            "is the default, the others are chosen by SNI; STARTTLS is then offered.",
            form=LIST, section="tls", metavar="FILE",
            details="Reloaded when the files change."),
    Setting("tls-key", c.strings, (),
            "The private key of each tls-cert, in the same order (certbot's privkey.pem); "
            "none if each certificate file holds its key.",
            form=LIST, section="tls", metavar="FILE"),
    Setting("tls", c.Boolean(), False,
            "Without tls-cert: offer TLS with a self-signed certificate for the host name, "
            "made once in the working directory (development).", form=FLAG, section="tls"),
    Setting("implicit-tls", c.Boolean(), False,
            "The listen endpoints (or a [[listener]]'s) speak TLS from the first byte.",
            form=FLAG, section="tls", details="An ``ssl:`` endpoint always does."),
    Setting("auth", c.authTypes, (),
            "An AUTH checker, a Twisted strcred string (memory:USER:PASS, file:PATH, "
            "unix, mailframe:PATH); asked in order; AUTH is offered only inside TLS.",
            form=LIST, section="tls", metavar="DESCRIPTION", shown="none (no AUTH)",
            details=(
                "``mailframe:PATH`` is a password file written by ``mailframe-passwd``; "
                "any installed ``ICheckerFactory`` works too (``--help-auth`` lists "
                "them).")),
    Setting("auth-plaintext", c.Boolean(), False,
            "Offer AUTH without TLS too: passwords in clear (tests on localhost only; "
            "warned about at start).", form=FLAG, section="tls"),
    Setting("require-auth", c.Boolean(), False,
            "MAIL needs an authenticated session (530 5.7.0), as on submission listeners.",
            form=FLAG, section="tls"),
    Setting("submission", c.endpoints, (),
            "A listener named submission (port 587 style) where MAIL needs AUTH; needs "
            "auth, and a certificate or auth-plaintext.",
            form=LIST, scope=TOP, section="tls", metavar="ENDPOINT"),
    Setting("submissions", c.endpoints, (),
            "A submission listener with TLS from the first byte (port 465 style); needs "
            "auth and a certificate.", form=LIST, scope=TOP, section="tls",
            metavar="ENDPOINT",
            details="With ``submission`` or ``submissions`` and no ``listen``, only they "
                    "listen."),
    Setting("lmtp", c.endpoints, (),
            "A listener named lmtp that speaks LMTP (RFC 2033), as another MTA's delivery "
            "agent (Postfix's lmtp: transport): a unix: or tcp: endpoint, never port 25.",
            form=LIST, scope=TOP, metavar="ENDPOINT", details=(
                "It has the top level's settings (validators, filters, backend, queue) and "
                "answers every recipient after the data; it waits no ``greet-delay``.  With "
                "``lmtp`` and no ``listen``, only it (and any submission listener) listens.  "
                "A ``[[listener]]`` table named ``lmtp`` speaks LMTP too.")),
    Setting("auth-failures", Count(1), 3,
            "Failed AUTH attempts in a session before 421 4.7.0 and close.", section="tls"),
    Setting("auth-failure-delay", _DELAY, 1.0,
            "How long a failed AUTH waits for its 535; 0 for none.", section="tls"),
    Setting("auth-client-failures", Count(1), 10,
            "Failed AUTH attempts of one client (an IPv4 address or an IPv6 /64) within "
            "auth-client-window that block it.", scope=TOP, section="tls"),
    Setting("auth-client-window", _SECONDS, 600.0,
            "The time over which a client's failed AUTH attempts are counted.",
            scope=TOP, section="tls"),
    Setting("auth-client-block", _SECONDS, 900.0,
            "How long a blocked client is refused: 421 4.7.0 at connect.",
            scope=TOP, section="tls"),
    # -- security checks --------------------------------------------------------------
    Setting("filter", c.filters, (),
            "A security check or other filter, a plug-in description: limits, dnsbl, "
            "helo, spf, dkim-verify, dmarc, authresults, dkim-sign, rspamd, or an "
            "installed plug-in of those kinds.", form=LIST, section="checks",
            metavar="DESCRIPTION",
            details=(
                "Each is used at every plug point it provides (connection filter, HELO "
                "validator, sender validator, recipient validator before the ``validate`` "
                "ones, message filter).  Message filters run in the order given, except "
                "that ``authresults`` runs after the checks and ``dkim-sign`` last.")),
    Setting("milter", c.milters, (),
            "A milter (OpenDKIM, clamav-milter, rspamd ...) in Postfix's syntax, "
            "inet:HOST:PORT or unix:PATH, asked at every stage of a session; milters "
            "are asked in the order given, after the filters.", form=LIST, section="checks",
            metavar="ADDRESS", details=(
                "In the config file an item may also be a table with ``address`` and "
                "``connect-timeout`` (10s), ``command-timeout`` (30s, each answer to "
                "connect, HELO, MAIL, RCPT, DATA), ``eom-timeout`` (3m, each answer about "
                "the message's content and its end), ``default-action`` (``tempfail``, or "
                "``accept``: what a milter that is down, times out or breaks the protocol "
                "does) and ``listeners`` (the names of the listeners it applies to; all by "
                "default).  See :doc:`milters`.")),
    Setting("limits", c.limits, "",
            "The connection limits of each listener, as options of the limits filter "
            "(client=20:rate=30); an empty string for its defaults, off for none; over "
            "a limit, 421 4.7.0.", section="checks", shown=_limits, metavar="OPTIONS"),
    Setting("enforce-sync", YesNo(), True,
            "A client that talks before the greeting, or sends commands ahead of the "
            "replies without PIPELINING, gets 554 5.5.0 and is dropped.", section="checks"),
    Setting("greet-delay", _DELAY, None,
            "How long to wait before greeting a client's first connection, so that early "
            "talkers show themselves (postscreen's pregreet test).", section="checks",
            shown=f"{_DELAY.format(DEFAULT_GREET_DELAY)}; 0 on listeners where MAIL needs "
                  "AUTH (submission)",
            details="A client that waited is greeted at once for a day after; a client of "
                    "a ``relay-network`` is greeted at once."),
    Setting("error-delay", _DELAY, 0.0,
            "A tarpit: after soft-errors errors in a session, each error reply waits this "
            "much longer than the last; 0 is off.", section="checks"),
    Setting("soft-errors", Count(0), 3, "Errors in a session before error-delay applies.",
            section="checks"),
    # -- the queue and the relay ------------------------------------------------------
    Setting("spool", c.spool, None,
            "Queue accepted mail in this directory (created, mode 0700), or in the "
            "PostgreSQL database postgresql://USER@HOST/DB shared by many nodes, and deliver "
            "it from there: local domains with deliver, the others relayed, with retries and "
            "reports.", scope=TOP, section="queue", metavar="DIR|URL",
            shown=f"{DEFAULT_SPOOL} when the queue is on, else no queue",
            details="With ``workers``, each worker uses ``DIR/worker-K``; a URL of another "
                    "scheme is refused.  See :doc:`scaling` for PostgreSQL."),
    Setting("spool-password-file", c.path, None,
            "A file holding the PostgreSQL spool's password (its first line); else libpq's "
            "PGPASSWORD or PGPASSFILE.", scope=TOP, section="queue", metavar="FILE"),
    Setting("node-name", c.string, None,
            "This node's name in a PostgreSQL queue shared by several (its leases, and "
            "the node that accepted each message).", scope=TOP, section="queue",
            shown="the host name (-wK for worker K)"),
    Setting("queue-lease", Duration(), 60.0,
            "PostgreSQL queue: how long a node's claim on a message lasts unless renewed "
            "(it is renewed every third of it while the node runs).",
            scope=TOP, section="queue"),
    Setting("spool-sync", c.syncMode, "fsync",
            "How the spool makes a commit durable: fsync of each file (in parallel), or "
            "one syncfs(2) of its file system (Linux).", scope=TOP, section="queue",
            metavar="fsync|syncfs",
            details="``syncfs`` is best when the spool has a file system of its own."),
    Setting("spool-threads", _SLOTS, 8, "Spool files fsync'd in parallel.",
            scope=TOP, section="queue"),
    Setting("relay-network", Networks(), (),
            "Clients in this network (CIDR; a,b for two) may relay, as authenticated "
            "clients may; the others get 550 5.7.1 at RCPT for domains that are not local.",
            form=LIST, section="queue", metavar="CIDR"),
    Setting("relay-host", c.nextHop, None,
            "A smarthost for every domain that is neither local nor routed: "
            "tcp:HOST:PORT, HOST:PORT, [ADDRESS]:PORT, HOST (port 25) or mx:DOMAIN.",
            scope=TOP, section="queue", metavar="HOST", shown="each domain's MX hosts"),
    Setting("relay-tls", c.tlsPolicy, None,
            "The smarthost's TLS policy: none, opportunistic, require or verify.",
            form=FILE, scope=TOP, section="queue",
            shown="verify, or opportunistic for a loopback address"),
    Setting("relay-user", c.string, None,
            "The smarthost's AUTH user name, with relay-password.",
            form=FILE, scope=TOP, section="queue"),
    Setting("relay-password", c.string, None,
            "The smarthost's AUTH password, with relay-user.",
            form=FILE, scope=TOP, section="queue",
            details="Keep the file readable by mailframe only."),
    Setting("routes", c.routes, {},
            "Per-domain routes, a table of domain = route: local (the local backend; the "
            "domain becomes local), a host, or a table.", form=FILE, scope=TOP,
            section="queue", details=(
                "For example ``\"example.org\" = \"local\"``, ``\"example.net\" = "
                "\"tcp:10.0.0.5:25\"``; a table has ``host``, ``port``, ``tls``, "
                "``tls-hostname``, ``username``, ``password``, ``auth-plaintext``.  "
                "``\".example.net\"`` matches its subdomains.  A route does not open "
                "relaying for its domain.")),
    Setting("relay", c.relayTable, {},
            "The relay's own settings, a table; relay-host and routes take precedence.",
            form=FILE, scope=TOP, section="queue", details=(
                "As :doc:`relay` describes them: ``tls``, ``connect-timeout``, "
                "``max-attempts``, ``keep-alive``, ``ca-file``, ``timeouts`` ... and "
                "``smarthost``, ``routes``.  Its times are durations too.")),
    Setting("retry-initial", _DURATION, 300.0,
            "The first retry after a temporary failure; each next one waits twice as long.",
            scope=TOP, section="queue"),
    Setting("retry-max", _DURATION, 3600.0, "The longest wait between two attempts.",
            scope=TOP, section="queue"),
    Setting("give-up", _DURATION, 5 * 86400.0,
            "Recipients still not delivered this long after arrival fail, and the sender "
            "gets a report.", scope=TOP, section="queue"),
    Setting("delay-warning", Duration("a duration", zero=True), 0.0,
            "Send the sender one delayed report when a message still waits this long "
            "after arrival; 0 or off for never.", scope=TOP, section="queue"),
    Setting("bounce-body-size", Size(), 16 << 10,
            "Octets of the body a failure report returns (with the whole header section).",
            scope=TOP, section="queue"),
    Setting("bounce-full-size", Size(), 1 << 20,
            "The largest message returned whole when the sender asked for it with RET=FULL.",
            scope=TOP, section="queue"),
    Setting("queue-connections", _SLOTS, 20, "Relay deliveries at once, in all.",
            scope=TOP, section="queue"),
    Setting("queue-destination-connections", _SLOTS, 5,
            "Relay deliveries at once to one destination (a domain's MX hosts, or a host).",
            scope=TOP, section="queue"),
    Setting("dane", Choice("auto", "yes", "no"), "auto",
            "DANE (RFC 7672) for MX delivery: TLSA records of MX hosts signed with DNSSEC make "
            "TLS mandatory, and the certificate must match them.", scope=TOP, section="queue",
            details=(
                "The resolver must validate (a local unbound, say): its AD bit is believed.  "
                "``auto`` turns DANE on when every DNS server asked (dns-server, or those of "
                "resolv-conf) is on loopback, where the AD bit cannot be forged on the way.  "
                "See :doc:`outbound-tls`.")),
    Setting("mta-sts", YesNo(), True,
            "MTA-STS (RFC 8461) for MX delivery: a domain's policy, fetched over HTTPS and "
            "kept, names its MX hosts and makes verified TLS mandatory (enforce mode).",
            scope=TOP, section="queue", details="DANE takes precedence for a host with both."),
    Setting("mta-sts-skip", c.domains, (),
            "Domains (and their subdomains) for which MTA-STS is off.", form=LIST, scope=TOP,
            section="queue", metavar="DOMAIN"),
    Setting("tls-state", c.path, None,
            "The directory of the MTA-STS policy cache and the TLS report counts (created, "
            "mode 0700).", scope=TOP, section="queue", metavar="DIR",
            shown="tls-state in the spool directory; memory only for another spool"),
    Setting("tlsrpt-org", c.string, None,
            "TLS reporting (RFC 8460): the organisation named in the daily reports sent to "
            "the addresses each policy domain publishes (_smtp._tls); needs the sender too.",
            scope=TOP,
            section="queue", metavar="NAME", shown="off"),
    Setting("tlsrpt-sender", c.string, None,
            "TLS reporting: the address reports are sent from (by mail, through the relay); "
            "needs the organisation too.", scope=TOP, section="queue", metavar="ADDRESS",
            shown="off"),
    # -- aliases and forwarding -------------------------------------------------------
    Setting("aliases", c.path, None,
            "Local aliases in the /etc/aliases format (lists, :include:, /dev/null), "
            "applied to the recipients of every local domain before the validators judge "
            "them; re-read when it changes.", section="aliases", metavar="FILE",
            shown="none", details=(
                "Targets of other domains are forwarded through the queue, so without "
                "``spool`` (or another setting that turns the queue on) a file with one "
                "does not load.  See :doc:`aliases`.")),
    Setting("virtual", c.path, None,
            "A virtual alias map in the style of Postfix's virtual(5) (user@domain and "
            "@domain keys; a domain alone declares a virtual alias domain), applied before "
            "the aliases; re-read when it changes.", section="aliases", metavar="FILE",
            shown="none"),
    Setting("subaddress", Separators(), "",
            "Subaddressing: user+tag@domain is delivered to user, the tag kept; the "
            "separator characters (+, or +- for either), or none.", section="aliases",
            details="The aliases and the virtual map look an address up whole first."),
    Setting("srs-secret", c.path, None,
            "A file of SRS secrets, one a line, the first signing: forwarded copies get an "
            "SRS sender, and bounces to it go back to the original sender; needs the queue.",
            scope=TOP, section="aliases", metavar="FILE", shown="none (forwarded copies "
            "keep their sender)", details=(
                "Make one with ``head -c 24 /dev/urandom | base64 > FILE``; keep it "
                "readable by mailframe only.  Put a new secret first and keep the old one "
                "for 21 days (the life of an SRS address).")),
    Setting("srs-domain", c.hostname, None,
            "The domain of SRS addresses; it becomes a local domain, and must receive mail "
            "here (an MX or address record).", scope=TOP, section="aliases", metavar="NAME",
            shown="the host name of the first listener"),
)  # fmt: skip

#: Every setting by name.
SETTINGS: Mapping[str, Setting] = {s.name: s for s in SCHEMA}

#: The defaults, already converted.  C{hostname} None means this host's name,
#: C{domain} empty means localhost and the host name, C{greet-delay} None
#: means L{DEFAULT_GREET_DELAY} (0 where MAIL needs AUTH).
DEFAULTS: Mapping[str, Any] = {s.name: s.default for s in SCHEMA}

#: Settings of the whole service, refused in [[listener]] tables.
TOP_LEVEL_ONLY = frozenset(s.name for s in SCHEMA if s.scope == TOP)


def convert(name: str, value: Any, label: str | None = None) -> Any:
    """Convert and check one setting; a L{SettingError} names it (or C{label})."""
    return SETTINGS[name].parse(value, label)
