"""
geometry.py's figures (matplotlib, Agg: files only): trajectories in the PC1-PC2 plane, distance
from the start, explained variance, cosines between runs, and accuracy over the plane.

    python geometry.py runs/           # writes runs/geometry/*.png beside geometry.json

Every function takes plain numbers (the report's), so figures_from_report redraws all of them from
geometry.json alone (study.py does, with one colour per method). Legends sit outside the axes, so
nothing they list covers a point.
"""
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

STYLES = ("-", "--", ":", "-.")  # the seeds of one method: one colour, a line style each


def outside_legend(ax, **kw):
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kw)


def draw_trajectories(ax, traj, colors, origin, styles=None, label=True):
    """traj: {run: (steps, xy (n, 2))}; a line per run, a dot per checkpoint, the last step
    labelled; origin: where the base model (ΔW = 0) falls in the plane."""
    ax.plot(*origin, "kx", ms=9, mew=2, label="base model (ΔW = 0)" if label else None)
    for run, (steps, xy) in traj.items():
        ax.plot(xy[:, 0], xy[:, 1], (styles or {}).get(run, "-"), marker="o", color=colors[run],
                ms=3, lw=1.2, label=run if label else None)
        ax.annotate(str(steps[-1]), xy[-1], fontsize=7, color=colors[run], xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="PC1", ylabel="PC2")


def save_figures(out, traj, colors, origin, evr, per_run_evr, dist, runs, cos_final, cos_time,
                 styles=None):
    styles = styles or {}
    # trajectories: runs whose paths are far shorter than the longest get a zoomed panel, so
    # they are not a blob at the origin
    extent = {run: float(np.ptp(np.vstack([xy, [origin]]), 0).max()) for run, (_, xy) in
              traj.items()}
    small = {run for run, e in extent.items() if e < 0.2 * max(extent.values())}
    fig, axes = plt.subplots(1, 2 if small else 1, figsize=(12 if small else 7, 5), squeeze=False)
    draw_trajectories(axes[0, 0], traj, colors, origin, styles)
    axes[0, 0].set_title(f"trajectories in the PC1-PC2 plane ({100 * sum(evr[:2]):.0f}% of the "
                         f"variance)", fontsize=10)
    if small:
        draw_trajectories(axes[0, 1], {r: traj[r] for r in traj if r in small}, colors, origin,
                          styles, label=False)
        axes[0, 1].set_title(f"zoomed: the {len(small)} shorter paths", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.9))
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, rows in dist.items():
        ax.plot(*zip(*rows), styles.get(run, "-"), marker="o", ms=3, color=colors[run], label=run)
    ax.set(xlabel="step", ylabel="||u_t - u_0||_F", title="distance from the start")
    outside_legend(ax)
    fig.savefig(out / "distance.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(7, 4))
    n = min(len(evr), 20)
    ax.bar(np.arange(1, n + 1), evr[:n], color="0.7", label="all runs")
    for run, r in per_run_evr.items():
        m = min(len(r), n)
        ax.plot(np.arange(1, m + 1), r[:m], styles.get(run, "-"), marker="o", ms=3,
                color=colors[run], label=run)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="component", ylabel="explained variance ratio",
           title="explained variance per component (bars: one PCA of all runs)")
    outside_legend(ax)
    fig.savefig(out / "explained_variance.png", dpi=120, bbox_inches="tight")
    # cosines: the finals as a matrix labelled by index (the legend names them), and over time
    # the spread over all pairs, not a line per pair
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5),
                                  gridspec_kw=dict(width_ratios=(1, 1.2), wspace=0.35))
    N = len(runs)
    im = ax.imshow(cos_final, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(xticks=range(N), yticks=range(N), xticklabels=range(1, N + 1),
           yticklabels=range(1, N + 1), title="cosine of the final updates")
    if N <= 12:
        for (i, j), c in np.ndenumerate(np.array(cos_final)):
            ax.text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    for k, run in enumerate(runs):
        ax2.plot([], [], styles.get(run, "-"), color=colors[run], label=f"{k + 1}: {run}")
    steps = sorted({s for rows in cos_time.values() for s, _ in rows})
    if steps:
        by = {s: [c for rows in cos_time.values() for t, c in rows if t == s] for s in steps}
        ax2.fill_between(steps, [min(by[s]) for s in steps], [max(by[s]) for s in steps],
                         color="0.8", label=f"min-max over the {len(cos_time)} pairs")
        ax2.plot(steps, [np.mean(by[s]) for s in steps], "k-o", ms=3, label="mean over pairs")
    ax2.axhline(0, color="0.5", lw=0.8)
    ax2.set(xlabel="step", ylabel="cosine", title="cosine between runs at the same step")
    outside_legend(ax2)
    fig.savefig(out / "cosine.png", dpi=120, bbox_inches="tight")
    plt.close("all")


def save_plane_figure(out, traj, colors, origin, a, b, acc, best, levels=(), samples=(),
                      styles=None):
    """levels: (value, label, style) contours, drawn between the grid points' centres."""
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    da, db = (a[1] - a[0]) / 2 if len(a) > 1 else 1, (b[1] - b[0]) / 2 if len(b) > 1 else 1
    im = ax.imshow(acc, origin="lower", extent=(a[0] - da, a[-1] + da, b[0] - db, b[-1] + db),
                   aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="accuracy", location="left", fraction=0.05, pad=0.12)
    for value, label, style in levels:
        if len(a) > 1 and len(b) > 1 and acc.min() < value < acc.max():
            ax.contour(a, b, acc, levels=[value], colors=style[0], linestyles=style[1],
                       linewidths=1.5)
            ax.plot([], [], color=style[0], ls=style[1], label=label)  # a contour has no legend
    draw_trajectories(ax, traj, colors, origin, styles)
    if samples:
        ax.plot([p["a"] for p in samples], [p["b"] for p in samples], "wo", ms=5, mfc="none",
                label="truncated samples")
    ax.plot([p["a"] for p in best], [p["b"] for p in best], "r*", ms=12, label="best")
    outside_legend(ax, facecolor="0.8")  # grey: the white contour and circles show in it
    ax.set_title(f"accuracy over the PC1-PC2 plane ({len(a)}x{len(b)} grid)", fontsize=10)
    fig.savefig(out / "plane.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plane_levels(base_acc, top, n):
    """The plane's contours: above the base, and good (within 90% of the best)."""
    levels = [(base_acc + 0.5 / n, f"above the base ({base_acc:.3f})", ("w", "--"))]
    if top > 0:
        levels.append((0.9 * top - 0.5 / n, f"good: >= 90% of the best ({0.9 * top:.3f})",
                       ("r", "-")))
    return levels


def figures_from_report(report, out, colors=None, styles=None):
    """Every figure again from a geometry.json report (a dict), e.g. with one colour per method."""
    runs = report["runs"]
    colors = colors or {run: f"C{k % 10}" for k, run in enumerate(runs)}
    traj = {run: ([c["step"] for c in report["checkpoints"] if c["run"] == run],
                  np.array([(c["pc"] + [0.0, 0.0])[:2] for c in report["checkpoints"]
                            if c["run"] == run])) for run in runs}
    origin = np.array(report["origin_pc"])
    per_run = {run: np.array(v) for run, v in report["explained_variance_ratio_per_run"].items()}
    save_figures(out, traj, colors, origin, report["explained_variance_ratio"], per_run,
                 report["distance_from_start"], runs, report["cosine_final"],
                 report["cosine_over_time"], styles)
    plane = report.get("plane")
    if plane:
        acc = np.array(plane["accuracy"])
        save_plane_figure(out, traj, colors, origin, np.array(plane["a"]), np.array(plane["b"]),
                          acc, plane["best"], plane_levels(plane["base_accuracy"], acc.max(),
                                                           plane["eval_limit"]),
                          plane["samples"], styles)
