"""
geometry.py's figures (matplotlib, Agg: files only): trajectories in the PC1-PC2 plane, distance
from the start, explained variance, cosines between runs, and accuracy over the plane.

    python geometry.py runs/           # writes runs/geometry/*.png beside geometry.json

Every function takes plain numbers (the report's), so a figure can be redrawn from geometry.json.
"""
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np


def draw_trajectories(ax, traj, colors, origin):
    """traj: {run: (steps, xy (n, 2))}; a line per run, a dot per checkpoint, first and last step
    labelled; origin: where the base model (ΔW = 0) falls in the plane."""
    ax.plot(*origin, "kx", ms=9, mew=2, label="base model (ΔW = 0)")
    for run, (steps, xy) in traj.items():
        ax.plot(xy[:, 0], xy[:, 1], "-o", color=colors[run], ms=3, lw=1.2, label=run)
        for k in {0, len(steps) - 1}:
            ax.annotate(str(steps[k]), xy[k], fontsize=7, color=colors[run], xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="PC1", ylabel="PC2")


def save_figures(out, traj, colors, origin, evr, per_run_evr, dist, runs, cos_final, cos_time):
    fig, ax = plt.subplots(figsize=(6, 5))
    draw_trajectories(ax, traj, colors, origin)
    ax.legend(fontsize=8)
    ax.set_title(f"trajectories in the PC1-PC2 plane ({100 * sum(evr[:2]):.0f}% of the variance)")
    fig.savefig(out / "trajectories.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in dist.items():
        ax.plot(*zip(*rows), "-o", ms=3, color=colors[run], label=run)
    ax.set(xlabel="step", ylabel="||u_t - u_0||_F", title="distance from the start")
    ax.legend(fontsize=8)
    fig.savefig(out / "distance.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(6, 4))
    n = min(len(evr), 20)
    ax.bar(np.arange(1, n + 1), evr[:n], color="0.7", label="all runs")
    for run, r in per_run_evr.items():
        ax.plot(np.arange(1, min(len(r), n) + 1), r[:n], "-o", ms=3, color=colors[run], label=run)
    ax.set(xlabel="component", ylabel="explained variance ratio",
           title="explained variance per component")
    ax.legend(fontsize=8)
    fig.savefig(out / "explained_variance.png", dpi=120, bbox_inches="tight")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    im = ax.imshow(cos_final, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(xticks=range(len(runs)), yticks=range(len(runs)), xticklabels=runs, yticklabels=runs,
           title="cosine of the final updates")
    for (i, j), c in np.ndenumerate(np.array(cos_final)):
        ax.text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    for pair, rows in cos_time.items():
        ax2.plot(*(zip(*rows) if rows else ([], [])), "-o", ms=3, label=pair)
    ax2.axhline(0, color="0.5", lw=0.8, label="orthogonal")
    ax2.set(xlabel="step", ylabel="cosine", title="cosine between runs at the same step")
    ax2.legend(fontsize=8)
    fig.savefig(out / "cosine.png", dpi=120, bbox_inches="tight")
    plt.close("all")


def save_plane_figure(out, traj, colors, origin, a, b, acc, best, levels=(), samples=()):
    """levels: (value, label, style) contours, drawn between the grid points' centres."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    da, db = (a[1] - a[0]) / 2 if len(a) > 1 else 1, (b[1] - b[0]) / 2 if len(b) > 1 else 1
    im = ax.imshow(acc, origin="lower", extent=(a[0] - da, a[-1] + da, b[0] - db, b[-1] + db),
                   aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="accuracy")
    for value, label, style in levels:
        if len(a) > 1 and len(b) > 1 and acc.min() < value < acc.max():
            ax.contour(a, b, acc, levels=[value], colors=style[0], linestyles=style[1],
                       linewidths=1.5)
            ax.plot([], [], color=style[0], ls=style[1], label=label)  # a contour has no legend
    draw_trajectories(ax, traj, colors, origin)
    if samples:
        ax.plot([p["a"] for p in samples], [p["b"] for p in samples], "wo", ms=5, mfc="none",
                label="truncated samples")
    ax.plot([p["a"] for p in best], [p["b"] for p in best], "r*", ms=12, label="best")
    ax.legend(fontsize=7)
    ax.set_title(f"accuracy over the PC1-PC2 plane ({len(a)}x{len(b)} grid)")
    fig.savefig(out / "plane.png", dpi=120, bbox_inches="tight")
