#!/usr/bin/env python3
"""Draw a bench run as a PNG: messages/s per workload and server, and the ratios.

    bench/.venv/bin/python bench/plot.py bench/results/STAMP/results.json [OUT.png]

The top panel has one group of bars per workload, one bar per server (the
median over the repetitions, with the fastest and slowest run as a line), on
a log scale since the workloads differ tenfold.  The bottom panel has the
ratios of the mailframe servers to their peers, measured in the same
repetitions, with issue 6's targets as black ticks.  run.py calls this after
every run; it needs matplotlib (bench/setup.sh installs it into the bench
venv) and exits with status 3 if it is missing.
"""

from __future__ import annotations

import json
import os
import sys

# mailframe in strong colours, the peers in muted ones
COLOURS = {
    "mailframe": "#d62728",
    "mailframe-maildir": "#ff7f0e",
    "mailframe-spool": "#8c564b",
    "twisted.mail": "#1f77b4",
    "aiosmtpd": "#2ca02c",
    "smtp-sink": "#7f7f7f",
    "postfix-durable": "#9467bd",
    "postfix-durable-noflow": "#c5b0d5",
    "twisted-mail-maildir": "#aec7e8",
    "aiosmtpd-maildir": "#98df8a",
}
# (server, peer) pairs of the ratio panel, in order
RATIO_PAIRS = [
    ("mailframe", "twisted.mail"),
    ("mailframe", "aiosmtpd"),
    ("mailframe-maildir", "postfix-durable"),
    ("mailframe-maildir", "twisted-mail-maildir"),
    ("mailframe-spool", "postfix-durable"),
]


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def paired_ratio(runs: list[dict], wl: str, server: str, peer: str) -> float | None:
    """Median over repetitions of server's msgs/s over peer's in the same repetition."""
    by: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["workload"] == wl and r["ok"] and r["server"] in (server, peer):
            by.setdefault(r["rep"], {})[r["server"]] = r["msgs_per_s"]
    xs = sorted(d[server] / d[peer] for d in by.values() if server in d and peer in d)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def positions(workloads, items, present):
    """x of each (workload, item) bar: the items present in a group, side by side."""
    most = max((sum(1 for i in items if present(wl, i)) for wl in workloads), default=1)
    width = 0.8 / max(1, most)
    pos = {}
    for j, wl in enumerate(workloads):
        here = [i for i in items if present(wl, i)]
        for k, i in enumerate(here):
            pos[wl, i] = j + (k - (len(here) - 1) / 2) * width
    return pos, width


def draw(data: dict, out: str) -> None:
    """Write the two-panel PNG for one results.json to C{out}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["summary"] if r["msgs_per_s"]]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    by = {(r["workload"], r["server"]): r for r in rows}

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    pos, width = positions(workloads, servers, lambda wl, s: (wl, s) in by)
    for s in servers:
        cells = [(pos[wl, s], by[wl, s]) for wl in workloads if (wl, s) in by]
        ys = [r["msgs_per_s"] for _, r in cells]
        bars = top.bar(
            [x for x, _ in cells],
            ys,
            width,
            label=s,
            color=COLOURS.get(s, "#bcbd22"),
            yerr=[
                [r["msgs_per_s"] - r["min"] for _, r in cells],
                [r["max"] - r["msgs_per_s"] for _, r in cells],
            ],
            error_kw={"elinewidth": 0.8, "capsize": 0},
        )
        top.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90, padding=2)
    top.set_yscale("log")
    top.set_ylabel("messages/s (median; line: min-max)")
    top.set_xticks(range(len(workloads)), workloads)
    top.legend(fontsize=7, ncol=min(5, len(servers)), loc="upper right")
    top.grid(axis="y", which="both", alpha=0.3)
    top.set_ylim(top.get_ylim()[0], top.get_ylim()[1] * 3)  # room for the labels

    targets = {
        (t["server"], t["peer"], t["workload"]): t["target"] for t in data.get("targets", [])
    }
    ratios = {
        (wl, pair): x
        for wl in workloads
        for pair in RATIO_PAIRS
        if (x := paired_ratio(data["runs"], wl, *pair)) is not None
    }
    pairs = [p for p in RATIO_PAIRS if any((wl, p) in ratios for wl in workloads)]
    pos, width = positions(workloads, pairs, lambda wl, p: (wl, p) in ratios)
    for s, p in pairs:
        cells = [
            (pos[wl, (s, p)], ratios[wl, (s, p)], wl) for wl in workloads if (wl, (s, p)) in ratios
        ]
        bars = bottom.bar(
            [x for x, _, _ in cells],
            [y for _, y, _ in cells],
            width,
            label=f"{s} / {p}",
            color=COLOURS.get(p, "#bcbd22"),
            edgecolor=COLOURS.get(s, "k"),
            linewidth=1.5,
            hatch="//" if s != "mailframe" else None,
        )
        bottom.bar_label(bars, labels=[f"{y:.2f}" for _, y, _ in cells], fontsize=7, padding=2)
        for x, _, wl in cells:
            goal = targets.get((s, p, wl))
            if goal:
                bottom.plot([x - width / 2, x + width / 2], [goal, goal], "k-", lw=2.5)
    bottom.axhline(1.0, color="k", lw=0.8)
    bottom.set_ylabel("mailframe / peer, same repetition (median)")
    bottom.set_xticks(range(len(workloads)), workloads)
    bottom.legend(
        fontsize=7, ncol=2, loc="upper left", title="black tick: issue 6 target", title_fontsize=7
    )
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_ylim(0, max(2.6, bottom.get_ylim()[1] * 1.15))

    meta = data["meta"]
    env = meta.get("environment", {})
    noise = data.get("noise", {})
    src = env.get("mailframe_installed_from", "?").replace("commit ", "")[:19]
    fig.suptitle(
        f"mailframe bench {meta['started']}: mailframe {src}; {env.get('nproc')} CPUs "
        f"({env.get('cpu', '?')}); {meta['reps']} repetitions; other CPU % median "
        f"{noise.get('other_cpu_pct_median', 0):.0f}",
        fontsize=9,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 3:
        print(__doc__, file=sys.stderr)
        return 2
    src = argv[1]
    out = argv[2] if len(argv) == 3 else os.path.join(os.path.dirname(src), "bench.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plot (bench/setup.sh installs it)", file=sys.stderr)
        return 3
    draw(load(src), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
