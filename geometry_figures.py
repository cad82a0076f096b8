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
from errors import describe

STYLES = ("-", "--", ":", "-.")  # the runs of one method: one colour, a line style each
# one colour per method, the study's (study_parts/report.py): rank 1 is always C0, and so on
METHOD_COLORS = {"LoRA rank 1": "C0", "LoRA rank 4": "C1", "LoRA rank 16": "C2",
                 "full fine-tuning": "k", "TinyLoRA, 13 parameters": "C3",
                 "TinyLoRA, 1 parameter": "C4"}
SPARE = ("C5", "C6", "C7", "C8", "C9", "tab:olive", "tab:cyan", "0.5")


def method_styles(methods):
    """{run: method} -> ({run: colour}, {run: line style}, {run: legend label}): a colour per
    method (the study's where it has one), a line style per run of the same method."""
    spare = iter(c for c in SPARE if c not in METHOD_COLORS.values())
    color = {}
    for m in sorted(set(methods.values()), key=lambda m: (m not in METHOD_COLORS, m)):
        color[m] = METHOD_COLORS.get(m) or next(spare, "0.5")
    styles, seen = {}, {}
    for run, m in methods.items():  # the k-th run of a method gets the k-th style
        styles[run], seen[m] = STYLES[seen.get(m, 0) % len(STYLES)], seen.get(m, 0) + 1
    return ({run: color[m] for run, m in methods.items()}, styles,
            {run: f"{run} ({m})" for run, m in methods.items()})


def outside_legend(ax, **kw):
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kw)


def draw_trajectories(ax, traj, colors, origin, styles=None, label=True, names=None):
    """traj: {run: (steps, xy (n, 2))}; a line per run, a dot per checkpoint, the last step
    labelled; origin: where the base model (ΔW = 0) falls in the plane."""
    ax.plot(*origin, "kx", ms=9, mew=2, label="base model (ΔW = 0)" if label else None)
    for run, (steps, xy) in traj.items():
        ax.plot(xy[:, 0], xy[:, 1], (styles or {}).get(run, "-"), marker="o", color=colors[run],
                ms=3, lw=1.2, label=(names or {}).get(run, run) if label else None)
        ax.annotate(str(steps[-1]), xy[-1], fontsize=7, color=colors[run], xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="PC1", ylabel="PC2")


def save_figures(out, traj, colors, origin, evr, per_run_evr, dist, runs, cos_final, cos_time,
                 styles=None, names=None, cos_to_final=None):
    """trajectories.png, distance.png, explained_variance.png and cosine.png; names: each run's
    legend label (its method), styles: its line style. Every legend entry is a drawn line."""
    styles, names = styles or {}, names or {}
    # trajectories: runs whose paths are far shorter than the longest get a zoomed panel, so
    # they are not a blob at the origin
    extent = {run: float(np.ptp(np.vstack([xy, [origin]]), 0).max()) for run, (_, xy) in
              traj.items()}
    small = {run for run, e in extent.items() if e < 0.2 * max(extent.values())}
    fig, axes = plt.subplots(1, 2 if small else 1, figsize=(12 if small else 7, 5), squeeze=False)
    draw_trajectories(axes[0, 0], traj, colors, origin, styles, names=names)
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
        ax.plot(*zip(*rows), styles.get(run, "-"), marker="o", ms=3, color=colors[run],
                label=names.get(run, run))
    ax.set(xlabel="step", ylabel="||u_t - u_0||_F", title="distance from the start")
    outside_legend(ax)
    fig.savefig(out / "distance.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(7, 4))
    n = min(len(evr), 20)
    ax.bar(np.arange(1, n + 1), evr[:n], color="0.7", label="all runs" if len(runs) > 1 else None)
    for run, r in per_run_evr.items() if len(runs) > 1 else ():
        m = min(len(r), n)
        ax.plot(np.arange(1, m + 1), r[:m], styles.get(run, "-"), marker="o", ms=3,
                color=colors[run], label=names.get(run, run))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="component", ylabel="explained variance ratio",
           title="explained variance per component" + (" (bars: one PCA of all runs)"
                                                       if len(runs) > 1 else f" ({runs[0]})"))
    if len(runs) > 1:
        outside_legend(ax)
    fig.savefig(out / "explained_variance.png", dpi=120, bbox_inches="tight")
    save_cosines(out, runs, colors, styles, names, cos_final, cos_time, cos_to_final or {})
    plt.close("all")


def save_cosines(out, runs, colors, styles, names, cos_final, cos_time, cos_to_final):
    """cosine.png: each run's updates against its own final (how soon its direction settles) and,
    with several runs, the finals' cosines as a matrix and their spread over the same steps."""
    N = len(runs)
    fig, axes = plt.subplots(1, 3 if N > 1 else 1, figsize=(19 if N > 1 else 7, 5),
                             squeeze=False, gridspec_kw=dict(wspace=0.45))
    ax = axes[0, -1]
    for run in runs:
        if cos_to_final.get(run):
            ax.plot(*zip(*cos_to_final[run]), styles.get(run, "-"), marker="o", ms=3,
                    color=colors[run], label=names.get(run, run))
    ax.set(xlabel="step", ylabel="cosine", ylim=(-1.05, 1.05),
           title="cosine of each checkpoint with its run's final update")
    outside_legend(ax)
    if N > 1:
        im = axes[0, 0].imshow(cos_final, vmin=-1, vmax=1, cmap="RdBu_r")
        axes[0, 0].set(xticks=range(N), yticks=range(N), title="cosine of the final updates")
        axes[0, 0].set_xticklabels(runs, rotation=90, fontsize=7)
        axes[0, 0].set_yticklabels(runs, fontsize=7)
        if N <= 12:
            for (i, j), c in np.ndenumerate(np.array(cos_final)):
                axes[0, 0].text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=7,
                                color="w" if abs(c) > 0.6 else "k")
        fig.colorbar(im, ax=axes[0, 0], fraction=0.046)
        steps = sorted({s for rows in cos_time.values() for s, _ in rows})
        by = {s: [c for rows in cos_time.values() for t, c in rows if t == s] for s in steps}
        if steps:
            axes[0, 1].fill_between(steps, [min(by[s]) for s in steps],
                                    [max(by[s]) for s in steps], color="0.8",
                                    label=f"min-max over the {len(cos_time)} pairs")
            axes[0, 1].plot(steps, [np.mean(by[s]) for s in steps], "k-o", ms=3,
                            label="mean over the pairs")
            axes[0, 1].legend(fontsize=7)
        axes[0, 1].axhline(0, color="0.5", lw=0.8)
        axes[0, 1].set(xlabel="step", ylabel="cosine", title="cosine between runs, same step")
    fig.savefig(out / "cosine.png", dpi=120, bbox_inches="tight")


def save_plane_figure(out, traj, colors, origin, a, b, acc, best, levels=(), samples=(),
                      styles=None, names=None):
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
    draw_trajectories(ax, traj, colors, origin, styles, names=names)
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


def figures_from_report(report, out, colors=None, styles=None, names=None):
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
                 report["cosine_over_time"], styles, names, report.get("cosine_to_final"))
    plane = report.get("plane")
    if plane:
        acc = np.array(plane["accuracy"])
        save_plane_figure(out, traj, colors, origin, np.array(plane["a"]), np.array(plane["b"]),
                          acc, plane["best"], plane_levels(plane["base_accuracy"], acc.max(),
                                                           plane["eval_limit"]),
                          plane["samples"], styles, names)


if __name__ == "__main__":
    describe(__doc__)
