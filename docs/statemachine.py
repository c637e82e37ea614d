"""
Draw the SMTP session state machines from mailframe.protocol._state (the
server) and mailframe.protocol._clientstate (the client), with what the
LMTP dialect changes in each.

Writes docs/_generated/statemachine.inc and docs/_generated/clientstate.inc
(reST tables and Graphviz dot sources) so the documentation can never
disagree with the code.  Run by docs/conf.py at build time;
``python docs/statemachine.py`` prints both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mailframe.protocol import _clientstate as C
from mailframe.protocol import _state as S
from mailframe.reply import Reply


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """A reST simple table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    sep = "  ".join("=" * w for w in widths)

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return [sep, line(rows[0]), sep, *(line(r) for r in rows[1:]), sep, ""]


def _reply(reply: Reply) -> str:
    return f"``{reply.code}`` {reply.lines[0]}"


def _target(t: object) -> str:
    if t is S.SAME:
        return "(same)"
    if t == S.CLEAR:
        return "READY (or CONNECTED before HELO)"
    return t.name  # type: ignore[attr-defined]


def _states(states: object) -> str:
    chosen = [s.name for s in S.State if s in states]  # type: ignore[operator]
    return "every state" if len(chosen) == len(tuple(S.State)) else ", ".join(chosen)


def _dot(name: str, edges: Sequence[tuple[str, str, str]]) -> list[str]:
    out = [".. code-block:: dot", "", f"   digraph {name} {{", "     rankdir=LR;"]
    out += [f'     {a} -> {b} [label="{label}"];' for a, b, label in dict.fromkeys(edges)]
    return [*out, "   }", ""]


def renderServer() -> str:
    out = ["Commands", "~~~~~~~~", ""]
    out.append(
        "Where each command is allowed, where its reply leads, and the reply it gets "
        "in any other state:"
    )
    out.append("")
    rows: list[tuple[str, ...]] = [
        ("event", "allowed in", "after 2xx/3xx", "after 4xx/5xx", "otherwise")
    ]
    for kind, t in S.TRANSITIONS.items():
        rows.append((f"``{kind.__name__}``", _states(t.allowed), _target(t.positive),
                     _target(t.negative), _reply(t.refusal)))  # fmt: skip
    out += _table(rows)
    for state, reply in S.REFUSALS.items():
        out.append(f"In {state.name}, every command not allowed gets {_reply(reply)} instead.")
    out.append("")
    usual = S.Transition._field_defaults["replies"]
    for kind, t in S.TRANSITIONS.items():
        if t.replies == usual:
            continue
        every2xx = usual <= t.replies
        shown = [str(c) for c in sorted(t.replies - usual if every2xx else t.replies)]
        codes = ", ".join(["2xx", *shown] if every2xx else shown)
        out.append(f"* ``{kind.__name__}`` may get only {codes} as a positive reply.")
    for kind, t in S.TRANSITIONS.items():
        if t.refused is not None:
            out.append(f"* A negative reply to ``{kind.__name__}`` makes *{t.refused}* hold.")
    out += ["", "Guards", "~~~~~~", ""]
    out.append(
        "Checked before the state, in this order: the first whose fact holds gives its "
        "reply, whether the state allows the command or not."
    )
    out.append("")
    rows = [("event", "in", "while", "reply")]
    for kind, guards in S.GUARDS.items():
        for g in guards:
            note = " (the chunk is not read)" if g.unread else ""
            rows.append((f"``{kind.__name__}``", _states(g.states), f"*{g.fact}*",
                         _reply(g.reply) + note))  # fmt: skip
    out += _table(rows)
    out += ["The facts, and when each holds:", ""]
    out += _table([("fact", "holds"), *((f"*{f}*", w) for f, w in S.FACTS.items())])
    out += ["Replies to no command, and the rest", "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~", ""]
    greetings = ", ".join(f"``{c}`` to {s.name}" for c, s in S.GREETING_REPLIES.items())
    before, after = S.HANDSHAKE
    last = ", ".join(f"in {s.name} to {_target(t)}" for s, t in S.LAST_CHUNK_REFUSED.items())
    out += [
        f"* The greeting (in GREETING) leads by its code: {greetings}; no other code greets.",
        f"* ``{S.CLOSING}`` may answer any command, or come unasked, and leads to CLOSED.",
        f"* ``startTLS()``, as the handshake begins, is allowed in {before.name} and leads "
        f"to {after.name}: HELO/EHLO and the transaction are forgotten.",
        f"* A refused ``BDAT LAST`` (its chunk read and discarded) leads {last}; elsewhere "
        "the state stays.  A message the core refuses itself (too big, a bare CR or LF, "
        "an overlong line) takes the negative transition of its end of data or chunk.",
        f"* Nothing is read in {', '.join(s.name for s in S.State if s in S.PAUSED_IN)}.",
        "",
        *_serverDialects(),
        "The same as a Graphviz graph (positive replies and the replies to no command):",
        "",
    ]
    edges = [(S.State.GREETING.name, s.name, str(c)) for c, s in S.GREETING_REPLIES.items()]
    for kind, t in S.TRANSITIONS.items():
        if t.positive is S.SAME:
            continue
        target = "READY" if t.positive == S.CLEAR else t.positive.name  # type: ignore[union-attr]
        edges += [(s.name, target, kind.__name__) for s in S.State if s in t.allowed]
    edges.append((before.name, after.name, "startTLS()"))
    out += _dot("smtp_server", edges)
    return "\n".join(out)


def _names(kinds: object) -> str:
    names = sorted(k.__name__ for k in kinds)  # type: ignore[attr-defined]
    return ", ".join(f"``{n}``" for n in names) or "none"


def _serverDialects() -> list[str]:
    """The dialects of the server tables (SMTP, LMTP), as a table."""
    out = [
        "The tables serve SMTP and LMTP (RFC 2033) alike; a dialect changes only "
        "these (events answered per recipient get one reply per accepted ``RCPT``, in "
        "order, duplicates included, and take their transition with the last one):",
        "",
    ]
    rows = [("dialect", "greeting verbs", "always in force", "answered per recipient")]
    for d in S.DIALECTS:
        verbs = ", ".join(f"``{v}``" + (" (extended)" if x else "") for v, x in d.hello.items())
        always = ", ".join(sorted(d.alwaysOffered)) or "none"
        rows.append((d.name, verbs, always, _names(d.perRecipient)))
    out += _table(rows)
    return out


def _clientDialects() -> list[str]:
    out = ["The dialects the client speaks on the same tables:", ""]
    rows = [("dialect", "greets with", "answered per accepted recipient")]
    for d in C.CLIENT_DIALECTS:
        verbs = ", ".join(f"``{verb}``" for verb in d.hello.values())
        kinds = _names(d.perRecipient).replace("``Bdat``", "the last ``Bdat``")
        rows.append((d.name, verbs, kinds))
    out += _table(rows)
    return out


def renderClient() -> str:
    def name(kind: object) -> str:
        return "the greeting" if kind is C.E.Greeting else f"``{kind.__name__}``"  # type: ignore[attr-defined]

    out = ["What may be sent in each state, and where sending it leads:", ""]
    rows = [("state", "may send", "then")]
    for state in C.CLIENT_STATES:
        sends = C.SENDS.get(state)
        if not sends:
            rows.append((state, "nothing", ""))
        elif set(sends) == C.COMMANDS:
            rows.append((state, "any command (``BDAT`` with ``sendChunk``)", "(same)"))
        else:
            for kind, target in sends.items():
                rows.append((state, name(kind), target or "(same)"))
    out += _table(rows)
    out += ["Replies that change the state (any other leaves it):", ""]
    rows = [("reply to", "code", "leads to")]
    for answered, rules in C.REPLIES.items():
        for code, target in rules.items():
            rows.append((name(answered), "any" if code == C.ANY else f"``{code}``", target))
    out += _table(rows)
    before, after = C.HANDSHAKE
    out += [
        f"* ``{C.CLOSING}``, to any command or unasked, leads to CLOSED; so does a reply "
        "that breaks the syntax or the bounds, a reply nobody asked for, and ``close()``.",
        f"* ``startTLS()`` is allowed in {before} and leads to {after}: what came with the "
        "220 is dropped and the capabilities are forgotten.",
        f"* Nothing is read in {', '.join(s for s in C.CLIENT_STATES if s in C.PAUSED_IN)}.",
        "",
    ]
    out += _clientDialects()
    edges: list[tuple[str, str, str]] = []
    for answered, rules in C.REPLIES.items():
        label = "greeting" if answered is C.E.Greeting else answered.__name__
        sources = ("GREETING",) if answered is C.E.Greeting else ("CONNECTED", "READY")
        for code, target in rules.items():
            text = label if code == C.ANY else f"{code} to {label}"
            edges += [(source, target, text) for source in sources]
    for state, sends in C.SENDS.items():
        edges += [(state, t, k.__name__) for k, t in sends.items() if t is not None]
    edges.append((before, after, "startTLS()"))
    out += _dot("smtp_client", edges)
    return "\n".join(out)


def render() -> str:
    return renderServer() + "\n" + renderClient()


def write(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    for filename, text in (
        ("statemachine.inc", renderServer()),
        ("clientstate.inc", renderClient()),
    ):
        path = os.path.join(directory, filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return os.path.join(directory, "statemachine.inc")


if __name__ == "__main__":
    print(render())
