"""Plot bench.soak's figures: ``python3 bench/plot_soak.py soak.json docs/soak.png``.

Standard library and matplotlib only (Debian: python3-matplotlib), so the system Python
can run it when the project's venv has no matplotlib.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, dest: str) -> None:
    with open(src) as f:
        doc = json.load(f)
    samples = doc["samples"]
    args = doc["args"]
    summary = doc["summary"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)

    ax = axes[0]
    ax.plot(t, [s["held"] for s in samples], label="calls held", color="tab:blue")
    ax.set_ylabel("held calls")
    ax2 = ax.twinx()
    sample_s = float(args["sample"])
    ax2.plot(t, [s["answered"] / sample_s for s in samples], label="answered/s", color="tab:green")
    ax2.set_ylabel("calls answered / s")
    ax.set_title(
        f"Pushgate soak: {summary['placed']} calls in {args['minutes']:g} min, "
        f"{summary['lost']} lost; {args['rate']:g} calls/s, wake after "
        f"{args['wake_min']:g}-{args['wake_max']:g} s, {args['error_share']:.0%} provider errors"
    )
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")

    ax = axes[1]
    ax.plot(t, [s["wake_p50_ms"] for s in samples], label="REGISTER -> INVITE p50")
    ax.plot(t, [s["wake_p99_ms"] for s in samples], label="REGISTER -> INVITE p99")
    ax.plot(t, [s["push_p99_ms"] for s in samples], label="INVITE -> push p99", linestyle="--")
    if any("kam_p99_ms" in s for s in samples):
        ax.plot(
            t,
            [s.get("kam_p99_ms", float("nan")) for s in samples],
            label="Kamailio: REGISTER in -> INVITE relayed p99",
            linestyle=":",
            color="black",
        )
    ax.set_ylabel("ms (per sample window)")
    ax.legend(loc="upper left")

    ax = axes[2]
    ax.plot(t, [s["shm_real_used_mb"] for s in samples], label="Kamailio shm real_used (MB)")
    ax.plot(t, [s["pkg_sum_mb"] for s in samples], label="Kamailio pkg, all processes (MB)")
    ax.set_ylabel("MB")
    ax.legend(loc="upper left")

    ax = axes[3]
    ax.plot(t, [s["pushd_rss_mb"] for s in samples], label="pushd RSS (MB)", color="tab:red")
    ax.set_ylabel("MB")
    ax.set_xlabel("minutes since the load started")
    ax.legend(loc="upper left")
    for ax, keys in ((axes[2], ("shm_real_used_mb", "pkg_sum_mb")), (axes[3], ("pushd_rss_mb",))):
        top = max((s[k] for s in samples for k in keys), default=1.0)
        ax.set_ylim(0, top * 1.3)

    fig.tight_layout()
    fig.savefig(dest, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
