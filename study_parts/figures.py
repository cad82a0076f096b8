"""
The study's figures, from run summaries and claim rows alone: LR sweeps and the curves the optima
are read from (with their parabolas), reward over the steps, LR against rank, the capacity knee in
stored bits, the ladder below rank 1, loss by rank, the skill dial and geometry.py's figures. One
colour per method in every figure; error bars are 95% t intervals over seeds with the binomial
floor (stats.error_bar: t₂ = 4.30 for three seeds, not 1.96).
"""
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

import flops
from study_parts import capacity
from study_parts import optima as opt
from study_parts import plan
from study_parts import stats as st
from study_parts import summaries as ss
from geometry_figures import STYLES, figures_from_report, outside_legend

COLORS = {"r1": "C0", "r4": "C1", "r16": "C2", "full": "k", "tiny13": "C3", "tiny1": "C4",
          "r1_alpha1": "C5", "r1_attn": "C6", "r1_mlp": "C7", "r1_first": "C8",
          "r1_middle": "C9", "r1_last": "tab:olive", "r64": "tab:brown", "xs1": "tab:pink",
          "xs2": "darkgoldenrod", "xs4": "tab:cyan", "xs8": "tab:gray", "tiny546": "maroon"}
LABELS = {"r1": "LoRA rank 1", "r4": "LoRA rank 4", "r16": "LoRA rank 16", "r64": "LoRA rank 64",
          "full": "full fine-tuning", "tiny13": "TinyLoRA, 13 parameters",
          "tiny1": "TinyLoRA, 1 parameter", "r1_alpha1": "LoRA rank 1, α = 1",
          "tiny546": "TinyLoRA untied, 546", "xs1": "LoRA-XS r=1, 42", "xs2": "LoRA-XS r=2, 168",
          "xs4": "LoRA-XS r=4, 672", "xs8": "LoRA-XS r=8, 2,688"}
SCALING_NAMES = {"alpha_r": "α/r", "rslora": "rsLoRA's α/√r", "constant": "a constant scale"}


def save(fig, path):
    for ax in fig.axes:  # a log axis labels its decades only: 2x10^-4, 3x10^-4 ... overlap
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def lr_figure(summaries, best, out):
    """Validation accuracy against LR for every swept method, with the chosen LR ringed."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, groups, title in ((axes[0], ("r1", "r4", "r16", "full", "r1_alpha1", "tiny13"),
                               "GRPO"), (axes[1], ("sft_r1", "sft_full"), "SFT (worked answers)")):
        for g in groups:
            table = ss.grid_seeds(ss.scores(summaries, g))
            if not table:
                continue
            m = g.replace("sft_", "")
            xs = sorted(table)
            ys = [np.mean(list(table[x].values())) for x in xs]
            es = np.nan_to_num([st.error_bar(list(table[x].values()), plan.VAL) for x in xs])
            ys_ = np.array(ys)  # bars clipped to [0, 1], where an accuracy lives
            yerr = [np.minimum(es, ys_), np.minimum(es, 1 - ys_)]
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, color=COLORS[m],
                        label=f"{LABELS.get(m, m)} ({len(next(iter(table.values())))} seeds)")
            for x in xs:  # every seed, so a collapsed one shows as what it is
                ax.plot([x] * len(table[x]), list(table[x].values()), ".", ms=4, alpha=0.5,
                        color=COLORS[m])
            if g in best:
                ax.plot(best[g], ys[xs.index(best[g])], "o", ms=12, mfc="none", color=COLORS[m])
        ax.set(xscale="log", xlabel="learning rate", title=f"{title}: validation accuracy "
               f"({plan.VAL} problems)\nring: the chosen LR; dots: each seed")
        ax.set_ylabel("accuracy (mean over seeds, 95% t interval)")
        outside_legend(ax)
    fig.tight_layout()
    save(fig, out / "lr_sweep.png")


def reward_figure(summaries, best, out):
    """Training reward over the steps at each method's chosen LR: the seeds' mean and range."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g in ("r1", "r4", "r16", "full", "tiny13"):
        runs = [s for s in ss.done(summaries, g) if s["lr"] == best.get(g)]
        if not runs:
            continue
        ys = [np.array([r["reward"] for r in s["train"] if "reward" in r]) for s in runs]
        n = min(map(len, ys))
        ys = np.stack([y[:n] for y in ys])
        x = np.arange(1, n + 1)
        ax.plot(x, ys.mean(0), color=COLORS[g], label=f"{LABELS[g]} (LR {best[g]:g}, "
                f"{len(ys)} seeds)")
        ax.fill_between(x, ys.min(0), ys.max(0), color=COLORS[g], alpha=0.15, lw=0)
    ax.set(xlabel="step", ylabel="training reward (band: the seeds' range)",
           title="GRPO: reward over the steps at each method's chosen LR")
    outside_legend(ax)
    save(fig, out / "reward_curves.png")


def lr_curves_figure(summaries, out):
    """The metrics the LR optima are read from, mean over seeds against LR, each with the
    parabola whose vertex is the optimum (ringed): RL's mean training reward at 40 and at 10
    steps, SFT's validation loss."""
    panels = [("GRPO, 40 steps: mean training reward", ("r1", "full", "r1_alpha1"),
               "mean_reward"), ("GRPO, 10 steps of 8 prompts: mean training reward",
                                ("r1_short", "full_short"), "mean_reward"),
              ("SFT: validation loss (nats/token)", ("sft_r1", "sft_full"), "val_loss")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for ax, (title, groups, metric) in zip(axes, panels):
        for g in groups:
            draw_lr_curve(ax, lists_of(summaries, g, metric), metric != "val_loss",
                          COLORS[g.replace("sft_", "").replace("_short", "")],
                          LABELS.get(g.replace("sft_", "").replace("_short", ""), g))
        ax.set(xscale="log", xlabel="learning rate", title=title)
        legend_or_nothing(ax)
    fig.tight_layout()
    save(fig, out / "lr_curves.png")


def legend_or_nothing(ax):
    """The legend of what a panel drew, or "not measured" where it drew nothing."""
    if ax.get_legend_handles_labels()[0]:
        outside_legend(ax)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes,
                color="0.4")
        ax.set(xticks=[], yticks=[])
        ax.minorticks_off()


def lists_of(summaries, group, metric):
    return ss.lists(ss.metric_table(summaries, group, metric))


def draw_lr_curve(ax, table, higher, color, label):
    """One grid: the mean over seeds with its range, each seed's dot, the fitted parabola and
    its vertex (none drawn when the optimum sits on the grid's edge)."""
    if not table:
        return
    xs = sorted(table)
    k = min(len(v) for v in table.values())
    ys = [np.mean(table[x]) for x in xs]
    ax.plot(xs, ys, "o-", color=color, ms=4, label=f"{label} ({k} seeds)")
    for x in xs:
        ax.plot([x] * len(table[x]), table[x], ".", ms=3, alpha=0.4, color=color)
    fit, top = opt.parabola(table, higher), opt.vertex(table, higher)
    if fit is not None and top is not None:
        window, coef, centre = fit
        u = np.linspace(np.log2(window[0]), np.log2(window[-1]), 50)
        ax.plot(2 ** u, np.polyval(coef, u - centre), "--", lw=1, color=color)
        ax.plot(top, np.polyval(coef, np.log2(top) - centre), "o", ms=11, mfc="none",
                color=color)


def lr_rank_figure(summaries, out):
    """SFT's validation loss against LR at each rank, one panel per scaling."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), sharey=True)
    for ax, (scaling, (power, _)) in zip(axes, plan.SCALINGS.items()):
        for r in plan.RANKS:
            g = "sft_r1" if r == 1 else f"sft_{scaling}_r{r}"
            draw_lr_curve(ax, lists_of(summaries, g, "val_loss"), False, COLORS[f"r{r}"],
                          LABELS[f"r{r}"])
        ax.set(xscale="log", xlabel="learning rate",
               title=f"{SCALING_NAMES[scaling]}: predicted optimum ∝ r^{power:g}")
        legend_or_nothing(ax)
    axes[0].set_ylabel("validation loss (nats/token)")
    fig.tight_layout()
    save(fig, out / "lr_vs_rank.png")


def knee_figure(row, out):
    """Stored bits against the data's bits, one line per method, capacity lines at 2 and 3.6
    bits a parameter."""
    fig, ax = plt.subplots(figsize=(8, 5))
    pts = row["points"]
    data = [p["data_bits"] for p in pts]
    ax.plot(data, data, color="0.6", lw=0.8, label="stored = the data's bits")
    for m in plan.KNEE_METHODS:
        have = [p for p in pts if m in p["stored_bits"]]
        if not have:
            continue
        y = [p["stored_bits"][m]["bits"] for p in have]
        err = np.array([[max(q["stored_bits"][m]["bits"] - q["stored_bits"][m]["interval"][0],
                             0), max(q["stored_bits"][m]["interval"][1] -
                                     q["stored_bits"][m]["bits"], 0)] for q in have]).T
        ax.errorbar([p["data_bits"] for p in have], y, yerr=err, marker="o", capsize=3,
                    color=COLORS[m], label=f"{LABELS[m]} ({capacity.knee_params(m):,} parameters)")
        if m != "full":
            for bits, ls in ((flops.BITS_PER_PARAM, ":"), (3.6, "-.")):
                ax.axhline(capacity.knee_params(m) * bits, color=COLORS[m], ls=ls, lw=0.8)
    ax.plot([], [], "k:", lw=0.8, label="capacity at 2 bits a parameter")
    ax.plot([], [], "k-.", lw=0.8, label="capacity at 3.6 bits a parameter")
    ax.set(xscale="log", yscale="log", xlabel="the data's bits (facts x 39.86)",
           ylabel="bits stored (95% bootstrap over facts)",
           title="The capacity knee: memorised facts, each method at its own LR")
    outside_legend(ax)
    save(fig, out / "knee.png")


def ladder_figure(row, out):
    """Test accuracy against trainable parameters in RL, full fine-tuning's interval as a band."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for p in row["points"]:
        iv = p["interval"] or [p["accuracy"]] * 2
        if p["method"] == "full":
            ax.axhspan(*iv, color="k", alpha=0.1, label=f"full fine-tuning ({p['params']:,})")
            continue
        ax.errorbar([p["params"]], [p["accuracy"]], yerr=[[p["accuracy"] - iv[0]],
                    [iv[1] - p["accuracy"]]], marker="o", capsize=3,
                    color=COLORS.get(p["method"], "0.4"), label=LABELS.get(p["method"],
                                                                         p["method"]))
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="test accuracy (95% t over seeds)",
           title="RL below rank 1: where matching full fine-tuning begins")
    outside_legend(ax)
    save(fig, out / "ladder.png")


def loss_figure(summaries, out):
    """Training loss on the facts at the largest size, by method; no figure (and no stale one)
    without runs."""
    runs = capacity.fact_runs(summaries, plan.FACTS[-1])
    if not runs:
        (out / "sft_loss_by_rank.png").unlink(missing_ok=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, s in runs.items():
        loss = [r["loss"] for r in s["train"] if "loss" in r]
        ax.plot(np.arange(1, len(loss) + 1), loss, color=COLORS[m], lw=0.8,
                label=f"{LABELS[m]} (LR {s['lr']:g})")
    ax.set(yscale="log", xlabel=f"step (batch {plan.FACT_BATCH}, {plan.FACT_EPOCHS} epochs)",
           ylabel="training loss (nats/token)",
           title=f"SFT memorising {plan.FACTS[-1]} facts: loss by rank")
    outside_legend(ax)
    save(fig, out / "sft_loss_by_rank.png")


def dial_figure(points, out):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, regime in zip(axes, ("rl", "sft")):
        for k, p in enumerate(points):
            acc = p.get(f"accuracy_{regime}", {})
            kinds = [x for x in capacity.DIAL_KINDS if x in acc]
            ax.plot([capacity.params_of(x) for x in kinds], [acc[x] for x in kinds], STYLES[k % 4],
                    marker="o", color=f"C{k}", label=f"p = {p['p']:g} (base {p['base']:.3f})")
        ax.set(xscale="log", xlabel="trainable parameters (TinyLoRA 1, 13; LoRA rank 1; full)",
               title=f"{'GRPO' if regime == 'rl' else 'SFT'}: test accuracy, best LR, seed 0")
    axes[0].set_ylabel("test accuracy")
    outside_legend(axes[1])
    fig.tight_layout()
    save(fig, out / "dial.png")


def geometry_figures(g, out):
    """geometry.py's figures, redrawn with one colour per rank and a line style per seed."""
    group = lambda run: run.split("_lr")[0].split("grpo_")[-1]
    seed = lambda run: int(run.rsplit("_s", 1)[1]) if "_s" in run else 0
    colors = {run: COLORS.get(group(run), "0.4") for run in g["runs"]}
    styles = {run: STYLES[seed(run) % len(STYLES)] for run in g["runs"]}
    figures_from_report(g, out, colors, styles)

