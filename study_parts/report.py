"""
The study's report: results/claims.json, the figures in results/figures/ and the block of
RESULTS.md between <!-- study --> and <!-- /study -->, from results/ alone (the run summaries,
geometry.json and study.json). Nothing here depends on a run folder, so

    python study.py --from results

rewrites the same bytes (the figures: study_parts/figures.py).
"""
from pathlib import Path

import numpy as np

import flops
from study_parts import capacity
from study_parts import claims as sc
from study_parts import figures
from study_parts import plan
from study_parts import stats as st
from study_parts import summaries as ss
from study_parts.rows import TEST
from errors import read_json, user_exit, write_atomic, write_json
from model import TOY_CONFIG

PROMPT_TOKENS = 60  # a toy prompt's length in tokens, for the FLOP count (byte-level tokenizer)


def run_seconds(s):
    """A run's own time: sampling, training and evaluation, one thread (the wall time of the
    process where its rows do not say: a base evaluation, the geometry)."""
    t = sum(r.get("t_sample", 0) + r.get("t_train", 0) + (r.get("seconds", 0) if "t_train" not in
            r else 0) for r in s.get("train", []))
    t += sum(r.get("eval_seconds", 0) + r.get("val_seconds", 0) for r in s.get("evals", []))
    return t or s.get("wall_seconds") or 0.0


PIECES = [("GRPO sweeps, rank 1 and full", lambda g: g in ("r1", "full")),
          ("GRPO short runs (10 steps of 8 prompts)", lambda g: g.endswith("_short")),
          ("GRPO ranks 4 and 16", lambda g: g in ("r4", "r16")),
          ("GRPO α = 1", lambda g: g == "r1_alpha1"),
          ("targets and layers", lambda g: g in {"r1_" + v for v in plan.VARIANTS}),
          ("the ladder below rank 1", lambda g: g in plan.LADDER),
          ("TinyLoRA (GRPO and SFT)", lambda g: g.split("_")[-1] in ("tiny1", "tiny13")
           and not g.startswith("p")),
          ("Adam's invariance", lambda g: g.startswith("adam")),
          ("SFT sweeps", lambda g: g in ("sft_r1", "sft_full")),
          ("SFT's LR against rank", lambda g: any(g.startswith(f"sft_{k}_r") for k in
                                                  plan.SCALINGS)),
          ("SFT batch size", lambda g: g.startswith("sft_") and "_b" in g),
          ("the capacity knee: facts", lambda g: g.startswith("facts_")),
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
# The report


def cell(v):
    return str(v).replace("|", "\\|").replace("\n", " ")  # a literal | in a Markdown table


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]


def base_section(summaries, best, g):
    b = ss.base_stats(summaries)
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
        runs = [s for s in ss.done(summaries, grp) if s["lr"] == best.get(grp)]
        share = [ss.final(s).get("eval_mode_share") for s in runs]
        acc = [ss.final(s).get("eval_pass1") for s in runs]
        if share and None not in share:
            moved.append(f"{figures.LABELS[grp]}: the mode's share {b['mode_share']:.3f} -> "
                         f"{np.mean(share):.3f} and pass@1 {b['pass1']:.3f} -> {np.mean(acc):.3f} "
                         f"(mean of {len(runs)} seeds at LR {best[grp]:g})")
    thirds = [f"{t} {np.mean(list(ss.at_best(summaries, best, 'r1_' + t).values())):.3f}"
              for t in plan.THIRDS if ss.at_best(summaries, best, "r1_" + t)]
    if moved:
        lines += ["", "What RL moves. " + "; ".join(moved) + "."]
    if thirds:
        lines += ["", "Rank-1 LoRA on one third of the layers (GRPO, test accuracy): "
                  + ", ".join(thirds) + "."]
    return lines + [""]


def knee_section(r):
    if "points" not in r:
        return []
    ms = list(plan.KNEE_METHODS)
    iv = lambda v: f"{v['bits']:,.0f} [{v['interval'][0]:,.0f}, {v['interval'][1]:,.0f}]"
    lines = ["### The capacity knee in stored bits", "", "![knee](results/figures/knee.png)", "",
             f"Facts memorised by SFT ({plan.FACT_EPOCHS} epochs, batch {plan.FACT_BATCH}), each "
             f"method at the LR that stored the most on {plan.FACT_TUNE} other facts; stored "
             f"bits = Σ max(0, 39.86 − the code's NLL in bits), 95% bootstrap over facts (one "
             f"training seed). Rank 1's capacity line: {r['capacity_bits']:,.0f} bits "
             f"({flops.BITS_PER_PARAM:g} a parameter).", ""]
    lines += table(("facts", "data bits", *(f"{m} stored" for m in ms), "rank 1 minus full",
                    "exact recall " + "/".join(ms)),
                   [(p["facts"], f"{p['data_bits']:,.0f}",
                     *(iv(p["stored_bits"][m]) if m in p["stored_bits"] else "" for m in ms),
                     iv(p["gap_to_full"]["r1"]) if "r1" in p["gap_to_full"] else "",
                     " / ".join(f"{p['exact_recall'][m]:.3f}" for m in ms
                                if m in p["exact_recall"])) for p in r["points"]])
    return lines + ["", "Bits per trainable parameter at the largest size: " + ", ".join(
        f"{m} {v:.3f}" for m, v in r["bits_per_param"].items()) + " (the source assumes 2; "
        "Morris et al. measured 3.6 for models trained to capacity).", ""]


def ladder_section(r):
    if "points" not in r:
        return []
    lines = ["### The ladder below rank 1 (RL)", "", "![ladder](results/figures/ladder.png)", ""]
    lines += table(("adapter", "parameters", "LR", "test accuracy", "95% t", "seeds",
                    "minus full", "matches full"),
                   [(p["method"], f"{p['params']:,}", f"{p['lr']:g}", f"{p['accuracy']:.3f}",
                     "" if p["interval"] is None else
                     f"[{p['interval'][0]:.3f}, {p['interval'][1]:.3f}]", p["n_seeds"],
                     f"{p['gap_to_full']:+.3f}" if "gap_to_full" in p else "",
                     p.get("matches_full", "")) for p in r["points"]])
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
    figures.lr_figure(summaries, best, figs)
    figures.lr_curves_figure(summaries, figs)
    figures.lr_rank_figure(summaries, figs)
    figures.reward_figure(summaries, best, figs)
    by_id = {r["id"]: r for r in rows}
    for rid, draw, name in (("capacity_knee_bits", figures.knee_figure, "knee"),
                            ("ladder_rl", figures.ladder_figure, "ladder")):
        if "points" in by_id[rid]:
            draw(by_id[rid], figs)
        else:
            (figs / f"{name}.png").unlink(missing_ok=True)
    figures.loss_figure(summaries, figs)
    dial = capacity.dial_points(summaries, best)
    if dial:
        figures.dial_figure(dial, figs)
    if g:
        figures.geometry_figures(g, figs)
    text = report(summaries, rows, best, meta, g, dial, figs)
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


def report(summaries, rows, best, meta, g, dial, figs):
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
             f"that time. 'Matches' is an equivalence test: the 95% interval of the "
             f"difference inside ±{st.EQUIVALENCE} and a minimum detectable effect (80% power) "
             f"no larger; 'does worse' is one-sided; a verdict needs {st.MIN_SEEDS} seeds. LRs "
             f"are chosen on the validation split ({plan.VAL} problems), verdicts read on the "
             f"test split ({TEST}); LR optima are parabola vertices in log-LR.", "",
             "### Verdicts", ""]
    lines += [f"- {st.sentence(r)}" for r in rows]
    lines += ["", "### The claims", ""]
    lines += table(("id", "claim", "source", "measured", "95% interval", "test", "seeds",
                    "selection", "verdict"),
                   [(r["id"], r["claim"], r["source"], r["measured"], st.interval_text(r),
                     r["test"], r["n_seeds"], r["selection"], f"**{r['verdict']}**") for r in rows])
    lines += ["", "Chosen LRs (validation): " + ", ".join(f"{k} {v:g}" for k, v in
                                                         sorted(best.items())), ""]
    lines += base_section(summaries, best, g)
    lines += knee_section(next(r for r in rows if r["id"] == "capacity_knee_bits"))
    lines += ladder_section(next(r for r in rows if r["id"] == "ladder_rl"))
    if dial:
        lines += ["### The skill dial", "", "![dial](results/figures/dial.png)", ""]
        fmt = lambda acc, k: (f"{acc[k]:.3f} ±{1.96 * st.binomial_se(acc[k], TEST):.3f}"
                              if k in acc else "")
        header = ("p", "base", "mode share", "regime", *capacity.DIAL_KINDS,
                  "smallest at half of full's gain")
        cells = [(f"{p['p']:g}", f"{p['base']:.3f}",
                  "" if p["mode_share"] is None else f"{p['mode_share']:.3f}", reg.upper(),
                  *(fmt(p.get(f"accuracy_{reg}", {}), k) for k in capacity.DIAL_KINDS),
                  capacity.smallest_text(p, reg))
                 for p in dial for reg in ("rl", "sft")]
        lines += table(header, cells)
        lines += ["", f"Each accuracy is seed 0 at its best LR on the validation split (the "
                  f"better of two on a built base, the best of the whole grid at p = 0.1); ± is "
                  f"1.96 binomial standard errors over the {TEST} test problems, which leaves "
                  f"out training noise (one seed a point: the budget).", ""]
    lines += ["### Where the time went", ""] + table(("piece", "runs", "one-thread hours"),
                                                     time_table(summaries)) + [""]
    shown = [f for f in ("lr_curves", "lr_vs_rank", "lr_sweep", "reward_curves",
                         "sft_loss_by_rank", "trajectories",
                         "explained_variance", "cosine", "plane", "distance")
             if (figs / f"{f}.png").exists()]
    lines += ["### Figures", ""] + [f"![{f}](results/figures/{f}.png)" for f in shown] + [""]
    if meta.get("failed"):
        lines += ["Runs that failed: " + ", ".join(sorted(meta["failed"])), ""]
    return "\n".join(lines)
