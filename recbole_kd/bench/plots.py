"""The report's plots: ``pareto_front`` and ``plot_points`` (the points and their Pareto front; no matplotlib
needed) and ``_plots``, which draws, per dataset, NDCG@10 vs parameters and vs latency with the Pareto front,
and the KD gain per distilled or transfer row, into ``<out>/plots/``. matplotlib is imported inside ``_plots``
only, which keeps it optional (``pip install recbole-kd[bench]``): without it the report has no plots.
"""
from __future__ import annotations

import os
import re

from recbole_kd.bench.records import PROTOCOL_NAMES
from recbole_kd.bench.suite import GROUPS
from recbole_kd.protocol import FILTER_SEEN


def pareto_front(points):
    """Indices of points (x, y) not dominated: no other point has x <= and y >= (one strictly)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_points(rows, key: str):
    """(points (x, NDCG@10), Pareto-front indices, per row "" or the device it was timed on when that is not
    the most common one). Latency depends on the machine: rows timed on another device (cells merged from
    a GPU run) are marked and left out of the latency front; parameters count the same everywhere."""
    pts = [(r[key], r["ndcg@10"][0]) for r in rows]
    devices = ["+".join(r.get("devices") or ["cpu"]) for r in rows]
    ref = max(devices, key=devices.count) if key == "latency_ms" and devices else None
    other = [dev if ref is not None and dev != ref else "" for dev in devices]
    same = [i for i, dev in enumerate(other) if not dev]
    return pts, [same[i] for i in pareto_front([pts[i] for i in same])], other


def _plots(rows, out) -> dict:
    # matplotlib is imported here, not at the top: that keeps it optional (recbole-kd[bench]); without it the
    # report is written without plots
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    colors = dict(zip(GROUPS, ("tab:gray", "tab:red", "tab:blue", "tab:green", "tab:purple")))
    made = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        ok = [r for r in rows if r["dataset"] == ds and r.get("status") == "ok" and r["ndcg@10"][0] is not None]
        if not ok:
            continue
        shown = PROTOCOL_NAMES[ok[0].get("protocol", FILTER_SEEN)]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ds)
        for key, xlabel, suffix in (("num_params", "parameters", "params"),
                                    ("latency_ms", "full-sort latency for 256 users (ms)", "latency")):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            pts, front, other = plot_points(ok, key)
            for r, (x, y), dev in zip(ok, pts, other):
                ax.errorbar(x, y, yerr=r["ndcg@10"][1], fmt="o", color=colors[r["group"]], capsize=3,
                            mfc="none" if dev else colors[r["group"]])
                ax.annotate(r["label"] + (f" ({dev})" if dev else ""), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="black", lw=1,
                    label="Pareto front")
            for g in GROUPS:
                if any(r["group"] == g for r in ok):
                    ax.plot([], [], "o", color=colors[g], label=g)
            if any(other):
                ax.plot([], [], "o", color="black", mfc="none", label="latency timed on another device")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (log)")
            ax.set_ylabel(f"test NDCG@10 ({shown})")
            ax.set_title(f"{ds}: NDCG@10 vs {xlabel.split(' (')[0]}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"plots/{slug}_ndcg_vs_{suffix}.png"
            fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.setdefault(ds, []).append((f"{ds} NDCG@10 vs {suffix}", name))
        gains = [r for r in ok if r["group"] in ("distilled", "transfer") and r.get("vs_student_alone")]
        if gains:
            # the title and the x label need about an inch whatever the number of bars: with one bar, a height
            # proportional to the bars alone left it no room (a squashed strip with the title cut)
            fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.45 * len(gains)))
            bars = ax.barh([r["label"] for r in gains], [r["vs_student_alone"] - 1 for r in gains],
                           color=["tab:green" if r["vs_student_alone"] >= 1 else "tab:red" for r in gains])
            ax.bar_label(bars, labels=[f"{r['vs_student_alone']:.2f}x" for r in gains], padding=3, fontsize=7)
            ax.margins(x=0.15)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_xlabel(f"NDCG@10 gain over the student alone (ratio - 1, {shown})")
            ax.set_title(f"{ds}: KD gain per row")
            fig.tight_layout()
            name = f"plots/{slug}_kd_gain.png"
            fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.setdefault(ds, []).append((f"{ds} KD gain", name))
    drawn = {name for plots in made.values() for _, name in plots}
    for f in os.listdir(os.path.join(out, "plots")):  # one this report no longer draws would show stale numbers
        if f.endswith(("_ndcg_vs_params.png", "_ndcg_vs_latency.png", "_kd_gain.png")) and f"plots/{f}" not in drawn:
            os.unlink(os.path.join(out, "plots", f))
    return made
