"""Latency distributions as pictures: one histogram panel per series (milliseconds), p50/p99 marked.

Benchmarks save them under runs/bench/ (git-ignored) so a reader can see the tail, not only two numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BENCH_OUT = Path(__file__).resolve().parents[2] / "runs" / "bench"


def save_latency_plot(series_ms: dict[str, np.ndarray], name: str, title: str, out_dir: Path = BENCH_OUT) -> Path:
    """Write <out_dir>/<name>.png with a histogram of every series; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(series_ms), figsize=(4.5 * len(series_ms), 3.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], series_ms.items()):
        v = np.asarray(values, dtype=float)
        ax.hist(v, bins=50, color="tab:blue", alpha=0.8)
        for q, style in ((50, "-"), (99, "--")):
            x = np.percentile(v, q)
            ax.axvline(x, color="tab:red", ls=style, lw=1)
            ax.text(x, ax.get_ylim()[1] * 0.9, f" p{q} {x:.2f}", color="tab:red", fontsize=8)
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("count")
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
