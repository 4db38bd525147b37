"""One PNG per run: both stages' losses and held-out perplexity against the teacher's."""
from __future__ import annotations

import json
from pathlib import Path


def plot_run(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines()]
    setup = next(r for r in rows if r["stage"] == "setup")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, stage, keys in ((axes[0], "stage1", ("loss",)), (axes[1], "stage2", ("loss", "kl", "ce"))):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if r["stage"] == stage and key in r]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(f"{stage} loss" + (" (relative MSE per layer)" if stage == "stage1" else ""))
        ax.set_xlabel("optimiser step")
        ax.set_yscale("log")
        ax.legend()
    offset = max([r["step"] for r in rows if r["stage"] == "stage1"] or [0])
    pts = [(0, setup["student_ppl"])]
    pts += [(r["step"] + (offset if r["stage"] == "stage2" else 0), r["student_ppl"])
            for r in rows if r["stage"] in ("stage1", "stage2") and "student_ppl" in r]
    axes[2].plot(*zip(*pts), marker="o", label="student")
    axes[2].axhline(setup["teacher_ppl"], color="k", linestyle="--", label="teacher")
    axes[2].axvline(offset, color="grey", linestyle=":", label="stage 1 | stage 2")
    axes[2].set_yscale("log")
    axes[2].set_title("held-out perplexity")
    axes[2].set_xlabel("optimiser step (both stages)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
