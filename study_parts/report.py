"""
The study's report: results/claims.json, the figures in results/figures/ and the block of
RESULTS.md between <!-- study --> and <!-- /study -->, from results/ alone (the run summaries,
geometry.json and study.json). Nothing here depends on a run folder, so

    python study.py --from results

rewrites the same bytes. One colour per method in every figure; error bars are 95% t intervals
over seeds with the binomial floor (stats.error_bar: t₂ = 4.30 for three seeds, not 1.96).
"""
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

import flops
from study_parts import claims as sc
from study_parts import plan
from study_parts import stats as st
from errors import read_json, user_exit, write_atomic, write_json
from geometry_figures import STYLES, figures_from_report, outside_legend
from model import TOY_CONFIG

COLORS = {"r1": "C0", "r4": "C1", "r16": "C2", "full": "k", "tiny13": "C3", "tiny1": "C4",
          "r1_alpha1": "C5", "r1_attn": "C6", "r1_mlp": "C7", "r1_first": "C8",
          "r1_middle": "C9", "r1_last": "tab:olive"}
LABELS = {"r1": "LoRA rank 1", "r4": "LoRA rank 4", "r16": "LoRA rank 16",
          "full": "full fine-tuning", "tiny13": "TinyLoRA, 13 parameters",
          "tiny1": "TinyLoRA, 1 parameter", "r1_alpha1": "LoRA rank 1, α = 1"}
PROMPT_TOKENS = 60  # a toy prompt's length in tokens, for the FLOP count (byte-level tokenizer)


def run_seconds(s):
    """A run's own time: sampling, training and evaluation, one thread (the wall time of the
    process where its rows do not say: a base evaluation, the geometry)."""
    t = sum(r.get("t_sample", 0) + r.get("t_train", 0) + (r.get("seconds", 0) if "t_train" not in
            r else 0) for r in s.get("train", []))
    t += sum(r.get("eval_seconds", 0) + r.get("val_seconds", 0) for r in s.get("evals", []))
    return t or s.get("wall_seconds") or 0.0


PIECES = [("GRPO sweeps, rank 1 and full", lambda g: g in ("r1", "full")),
          ("GRPO ranks 4 and 16", lambda g: g in ("r4", "r16")),
          ("GRPO α = 1", lambda g: g == "r1_alpha1"),
          ("targets and layers", lambda g: g in {"r1_" + t for t in (
              "attn", "mlp", *plan.THIRDS)}),
          ("the capacity knee", lambda g: "_e" in g),
          ("Adam's invariance", lambda g: g.startswith("adam")),
          ("TinyLoRA (GRPO and SFT)", lambda g: g.split("_")[-1] in ("tiny1", "tiny13")
           and not g.startswith("p")),
          ("SFT sweeps", lambda g: g in ("sft_r1", "sft_full")),
          ("SFT batch size", lambda g: g.startswith("sft_") and "_b" in g),
          ("SFT of the direct answers by rank", lambda g: g.startswith("direct_")),
          ("the dial: bases and their evaluations", lambda g: g in ("base_build", "base")),
          ("the dial: adapters on the built bases", lambda g: g.startswith("p")),
          ("geometry", lambda g: g == "geometry")]


def time_table(summaries):
    """(piece, runs, one-thread hours) for the report."""
    rows = []
    for name, member in PIECES:
        mine = [s for s in summaries.values() if member(s["group"])]
        if mine:
            rows.append((name, len(mine), f"{sum(map(run_seconds, mine)) / 3600:.2f}"))
    return rows


def run_flops(s):
    """Training and sampling FLOPs of a run (flops.py's counts; evaluations not counted)."""
    argv = s["argv"]
    get = lambda flag, default: argv[argv.index(flag) + 1] if flag in argv else default
    if s["script"] == "grpo.py":
        rank = 2 if "tinylora" in argv else int(get("--rank", 1))
        adapter = "tinylora" if "tinylora" in argv else "lora"
        return sum(flops.grpo_step_flops(TOY_CONFIG, int(get("--batch", plan.PROMPTS)),
                                         plan.GROUP, PROMPT_TOKENS, max(1, round(r["length"])),
                                         rank, get("--targets", "all"), adapter)["total"]
                   for r in s["train"] if "length" in r)
    if s["script"] == "sft.py":
        rank = 0 if s["group"] == "base_build" else 2 if "tinylora" in argv else \
            int(get("--rank", 1))
        batch = int(get("--batch-size", plan.SFT_BATCH))
        return sum(flops.total(flops.step_flops(TOY_CONFIG, batch, PROMPT_TOKENS + max(
            1, round(r["tokens"] / batch)), rank)) for r in s["train"] if "tokens" in r)
    return 0.0

# -----------------------------------------------------------------------------
# Figures


def save(fig, path):
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def lr_figure(summaries, best, out):
    """Validation accuracy against LR for every swept method, with the chosen LR ringed."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, groups, title in ((axes[0], ("r1", "r4", "r16", "full", "r1_alpha1", "tiny13"),
                               "GRPO"), (axes[1], ("sft_r1", "sft_full"), "SFT (worked answers)")):
        for g in groups:
            table = sc.scores(summaries, g)
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
        runs = [s for s in sc.done(summaries, g) if s["lr"] == best.get(g)]
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


def knee_figure(points, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fill = [p["fill"] for p in points]
    gap = [p["gap"] for p in points]
    err = np.array([[p["gap"] - p["interval"][0], p["interval"][1] - p["gap"]] for p in points]).T
    ax.errorbar(fill, gap, yerr=err, marker="o", capsize=3, color=COLORS["r1"],
                label="rank 1 minus full fine-tuning (95% t, paired by seed; within ±1)")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axhline(-st.MARGIN, color="0.5", ls=":", label=f"the margin, -{st.MARGIN}")
    ax.axvline(1, color="C3", ls="--", lw=0.8, label="fill 1: bits = capacity")
    for p in points:
        ax.annotate(f"{p['steps']}x{p['prompts']}", (p["fill"], p["gap"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", xlabel="fill: episodes x 1 bit / (rank-1 parameters x 2 bits)",
           ylabel="test accuracy gap", title="The capacity knee (steps x prompts per step)")
    outside_legend(ax)
    save(fig, out / "knee.png")


def loss_figure(summaries, out):
    """Training loss of the direct-answer SFT by rank; no figure (and no stale one) without runs."""
    ranks = {m: sc.loss_curves(summaries, f"direct_{m}") for m in ("r1", "r4", "r16", "full")}
    ranks = {m: c for m, c in ranks.items() if c[0]}
    if not ranks:
        (out / "sft_loss_by_rank.png").unlink(missing_ok=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, (curves, seeds) in ranks.items():
        n = min(map(len, curves.values()))
        low = np.min(np.stack([c[:n] for c in curves.values()]), 0)  # pointwise min over LRs
        ax.plot(np.arange(1, n + 1), low, color=COLORS[m], label=f"{LABELS[m]} ({len(curves)} "
                f"LRs, mean of {len(seeds)} seeds)")
    ax.set(yscale="log", xlabel="step (batch 64, one epoch)", ylabel="training loss "
           "(nats/token, min over LRs)", title="SFT of the direct answers: loss by rank")
    outside_legend(ax)
    save(fig, out / "sft_loss_by_rank.png")


def dial_figure(points, out):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, regime in zip(axes, ("rl", "sft")):
        for k, p in enumerate(points):
            acc = p.get(f"accuracy_{regime}", {})
            kinds = [x for x in sc.DIAL_KINDS if x in acc]
            ax.plot([sc.params_of(x) for x in kinds], [acc[x] for x in kinds], STYLES[k % 4],
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

# -----------------------------------------------------------------------------
# The report


def cell(v):
    return str(v).replace("|", "\\|").replace("\n", " ")  # a literal | in a Markdown table


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]


def base_section(summaries, best, g):
    b = sc.base_stats(summaries)
    if not b:
        return []
    iv = lambda k: f"{b[k]:.3f} [{b[k + '_ci'][0]:.3f}, {b[k + '_ci'][1]:.3f}]"
    lines = ["### The toy base", "",
             f"toy_base/ (p = 0.1) on the {b['n']} test problems, {b['k']} samples each at "
             f"temperature 1: pass@1 {iv('pass1')}, pass@{b['k']} {iv('pass' + str(b['k']))}, the "
             f"worked mode in {iv('mode_share')} of the samples, accuracy in the mode "
             f"{iv('acc_in_mode')}, outside it {iv('acc_outside')}; greedy {b['accuracy']:.3f} "
             f"(95% intervals: bootstrap over problems)."]
    moved = []
    for grp in ("r1", "tiny13"):
        runs = [s for s in sc.done(summaries, grp) if s["lr"] == best.get(grp)]
        share = [sc.final(s).get("eval_mode_share") for s in runs]
        acc = [sc.final(s).get("eval_pass1") for s in runs]
        if share and None not in share:
            moved.append(f"{LABELS[grp]}: the mode's share {b['mode_share']:.3f} -> "
                         f"{np.mean(share):.3f} and pass@1 {b['pass1']:.3f} -> {np.mean(acc):.3f} "
                         f"(mean of {len(runs)} seeds at LR {best[grp]:g})")
    thirds = [f"{t} {np.mean(list(sc.at_best(summaries, best, 'r1_' + t).values())):.3f}"
              for t in plan.THIRDS if sc.at_best(summaries, best, "r1_" + t)]
    if moved:
        lines += ["", "What RL moves. " + "; ".join(moved) + "."]
    if thirds:
        lines += ["", "Rank-1 LoRA on one third of the layers (GRPO, test accuracy): "
                  + ", ".join(thirds) + "."]
    return lines + [""]


def write(results, report_path, meta):
    """claims.json, the figures and the report block, from results/ alone."""
    results = Path(results)
    summaries = {n: s for n, s in sc_summaries(results).items() if n in set(meta["runs"])}
    g = read_json(results / "geometry.json") if (results / "geometry.json").exists() else None
    rows, best = sc.claims(summaries, g)
    st.check_claims({"rows": rows})
    write_json(results / "claims.json", dict(rows=rows, best_lr=best, mode=meta["mode"],
                                             code=meta["code"]))
    figs = results / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    lr_figure(summaries, best, figs)
    reward_figure(summaries, best, figs)
    knee = sc.knee_points(summaries, best)
    points = next((r["points"] for r in rows if r["id"] == "capacity_knee" and "points" in r), [])
    if points:
        knee_figure(points, figs)
    loss_figure(summaries, figs)
    dial = sc.dial_points(summaries, best)
    if dial:
        dial_figure(dial, figs)
    if g:
        geometry_figures(g, figs)
    text = report(summaries, rows, best, meta, g, dial, bool(knee), figs)
    path = Path(report_path)
    old = path.read_text() if path.exists() else "# Results\n\n<!-- study -->\n<!-- /study -->\n"
    if "<!-- study -->\n" not in old or "<!-- /study -->" not in old:
        raise user_exit(f"{path}: no <!-- study --> ... <!-- /study --> block to write into")
    a = old.index("<!-- study -->\n") + len("<!-- study -->\n")
    b = old.index("<!-- /study -->")
    write_atomic(path, lambda tmp: Path(tmp).write_text(old[:a] + text + old[b:]))
    print(f"wrote {path}, {results / 'claims.json'} and {figs}/")


def sc_summaries(results):
    folder = results / "runs"
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def report(summaries, rows, best, meta, g, dial, knee, figs):
    code, runs_n = meta["code"], len(summaries)
    total_flops = sum(run_flops(s) for s in summaries.values())
    seconds = meta["run_seconds"]
    rate = meta["matmul_flops"]
    inv = "; ".join(f"`--{i['mode']}` on {i['date']}: {i['wall_seconds'] / 3600:.2f} h wall, "
                    f"{i['launched']} runs launched" + (f" on {i['machine']}" if "machine" in i
                                                        else "") for i in meta["invocations"])
    lines = [f"Made by `python study.py --{meta['mode']}` at commit {str(code['commit'])[:10]}"
             f"{' (with uncommitted changes)' if code['dirty'] else ''}, code hash "
             f"{code['hash']}, on {meta['machine']}, {meta['jobs']} single-threaded jobs side by "
             f"side. Regenerate this block, results/claims.json and results/figures/ from "
             f"results/ alone: `python study.py --from results`.", "",
             f"{runs_n} runs took {seconds / 3600:.2f} one-thread hours of their own time "
             f"(sampling, training, evaluation). Invocations: {inv}. Their training and sampling "
             f"come to {total_flops / 1e15:.2f} PFLOP (flops.py; evaluations not counted): "
             f"{100 * total_flops / max(seconds * rate, 1):.1f}% of what this machine's "
             f"one-thread float32 matmul rate ({rate / 1e9:.1f} GFLOP/s, 512x512) would do in "
             f"that time. Margin for 'matches': {st.MARGIN}; a verdict needs {st.MIN_SEEDS} "
             f"seeds; LRs chosen on the validation split ({plan.VAL} problems), verdicts on the "
             f"test split ({sc.TEST}).", "", "### Verdicts", ""]
    lines += [f"- {st.sentence(r)}" for r in rows]
    lines += ["", "### The claims", ""]
    lines += table(("id", "claim", "source", "measured", "95% interval", "test", "seeds",
                    "selection", "verdict"),
                   [(r["id"], r["claim"], r["source"], r["measured"], "" if r["interval"] is None
                     else f"[{r['interval'][0]:+.3g}, {r['interval'][1]:+.3g}]", r["test"],
                     r["n_seeds"], r["selection"], f"**{r['verdict']}**") for r in rows])
    lines += ["", "Chosen LRs (validation): " + ", ".join(f"{k} {v:g}" for k, v in
                                                         sorted(best.items())), ""]
    lines += base_section(summaries, best, g)
    if knee:
        pts = next(r["points"] for r in rows if r["id"] == "capacity_knee")
        lines += ["### The capacity knee", "", "![knee](results/figures/knee.png)", ""]
        lines += table(("steps x prompts", "episodes", "fill", "rank 1 minus full",
                        "95% t (in ±1)", "seeds"), [(f"{p['steps']}x{p['prompts']}", p["steps"] * p["prompts"] *
                                    plan.GROUP, f"{p['fill']:.3f}", f"{p['gap']:+.3f}",
                                    f"[{p['interval'][0]:+.3f}, {p['interval'][1]:+.3f}]",
                                    p["n_seeds"]) for p in pts]) + [""]
    if dial:
        lines += ["### The skill dial", "", "![dial](results/figures/dial.png)", ""]
        fmt = lambda acc, k: (f"{acc[k]:.3f} ±{1.96 * st.binomial_se(acc[k], sc.TEST):.3f}"
                              if k in acc else "")
        lines += table(("p", "base", "mode share", "regime", *sc.DIAL_KINDS, "smallest at half "
                        "of full's gain"), [(f"{p['p']:g}", f"{p['base']:.3f}",
                                             "" if p["mode_share"] is None else
                                             f"{p['mode_share']:.3f}", reg.upper(),
                                             *(fmt(p.get(f"accuracy_{reg}", {}), k)
                                               for k in sc.DIAL_KINDS),
                                             p.get(f"smallest_{reg}") or "none")
                                            for p in dial for reg in ("rl", "sft")])
        lines += ["", f"Each accuracy is seed 0 at the better of its LRs on the validation split; "
                  f"± is 1.96 binomial standard errors over the {sc.TEST} test problems, which "
                  f"leaves out training noise (one seed a point: the budget).", ""]
    lines += ["### Where the time went", ""] + table(("piece", "runs", "one-thread hours"),
                                                     time_table(summaries)) + [""]
    shown = [f for f in ("lr_sweep", "reward_curves", "sft_loss_by_rank", "trajectories",
                         "explained_variance", "cosine", "plane", "distance")
             if (figs / f"{f}.png").exists()]
    lines += ["### Figures", ""] + [f"![{f}](results/figures/{f}.png)" for f in shown] + [""]
    if meta.get("failed"):
        lines += ["Runs that failed: " + ", ".join(sorted(meta["failed"])), ""]
    return "\n".join(lines)
