"""
The trajectory study's claims, from geometry.py's report over the study's best LoRA runs
(results/geometry.json): PC1 + PC2, orthogonal finals, the size of ΔW, the plane's good region,
rank-1 truncation (paired by problem: a bootstrap interval and McNemar's test). claims.py puts
these rows beside the others.
"""
import numpy as np

from study_parts import stats as st
from study_parts.stats import row

TRAJ = "the trajectory study"




GEOMETRY_CLAIMS = dict(
    pc12_variance="PC1 + PC2 hold > 90% of the variance of all checkpoints of all runs",
    pc12_variance_blog_design="PC1 + PC2 hold > 90% of the variance, one run per rank (the "
                              "blog's design)",
    orthogonal_finals="the final updates of different runs are nearly orthogonal (|cos| < 0.3)",
    update_small="||ΔW|| / ||W|| is extremely small (< 0.05)",
    plane_region="a large region (> 25%) of the PC1-PC2 plane is good (within 90% of its best)",
    rank1_truncation="rank-1 truncation of the higher-rank finals and of plane points loses "
                     "nothing (within the margin)")


def geometry_rows(g, missing):
    """The rows of the trajectory study's claims from a geometry.json report (None: every row
    inconclusive, saying so; missing makes that row)."""
    if not g:
        return [missing(rid, claim, TRAJ, "no geometry.json") for rid, claim in
                GEOMETRY_CLAIMS.items()]
    rows, runs = [], g["runs"]
    descriptive = "descriptive: one PCA of every checkpoint"
    evr = g["explained_variance_ratio"]
    energy = g.get("rank1_energy", {}).get("mean_over_matrices", {})
    e_text = ("; per-matrix rank-1 SVD energy of the final ΔW, mean over matrices: "
              + ", ".join(f"{r} {v:.2f}" for r, v in energy.items())) if energy else ""
    rows.append(row("pc12_variance", GEOMETRY_CLAIMS["pc12_variance"], TRAJ,
                    f"{sum(evr[:2]):.3f} ({len(g['checkpoints'])} checkpoints, {len(runs)} runs)"
                    f"{e_text}", None, descriptive, 0,
                    "the validation-best runs of ranks 1, 4, 16, every seed",
                    "holds" if sum(evr[:2]) > 0.9 else "does not hold"))
    blog = g.get("blog_design")
    if blog:
        b = blog["explained_variance_ratio"]
        rows.append(row("pc12_variance_blog_design", GEOMETRY_CLAIMS["pc12_variance_blog_design"],
                        TRAJ, f"{sum(b[:2]):.3f} ({blog['checkpoints']} checkpoints of "
                        f"{len(blog['runs'])} runs: {', '.join(blog['runs'])}), beside "
                        f"{sum(evr[:2]):.3f} pooled over {len(runs)}", None,
                        "descriptive: one PCA of the sub-Gram of those runs' checkpoints", 0,
                        "seed 0 of each rank", "holds" if sum(b[:2]) > 0.9 else "does not hold"))
    else:
        rows.append(missing("pc12_variance_blog_design",
                            GEOMETRY_CLAIMS["pc12_variance_blog_design"], TRAJ,
                            "no sub-Gram in geometry.json"))
    cos = np.array(g["cosine_final"])
    off = np.abs(cos[~np.eye(len(cos), dtype=bool)])
    rows.append(row("orthogonal_finals", GEOMETRY_CLAIMS["orthogonal_finals"], TRAJ,
                    f"|cosine| {off.min():.2f}-{off.max():.2f} over {len(off) // 2} pairs of "
                    f"{len(runs)} runs", None, descriptive, 0, "",
                    "holds" if off.max() < 0.3 else "does not hold"))
    u = g.get("update_to_weight", {})
    rows.append(row("update_small", GEOMETRY_CLAIMS["update_small"], TRAJ,
                    f"{min(u.values()):.3f}-{max(u.values()):.3f} over {len(u)} runs", None,
                    "descriptive", 0, "", "holds" if max(u.values()) < 0.05
                    else "does not hold"))
    plane = g.get("plane")
    if plane:
        acc = np.array(plane["accuracy"])
        finals = plane.get("final_accuracy", {})
        rows.append(row("plane_region", GEOMETRY_CLAIMS["plane_region"], TRAJ,
                        f"{100 * plane['good_fraction']:.0f}% of the {acc.shape[0]}x"
                        f"{acc.shape[1]} grid; best point {acc.max():.3f} (the max of "
                        f"{acc.size}: biased up) vs the best final {max(finals.values()):.3f}; "
                        f"{100 * plane['above_base_fraction']:.0f}% above the base "
                        f"({plane['base_accuracy']:.3f}); {plane['eval_limit']} test problems",
                        None, "descriptive", 0, "",
                        "holds" if plane["good_fraction"] > 0.25 else "does not hold"))
    trunc = g.get("truncation")
    if trunc:
        cut = [t for t in trunc["rows"] if "correct" in t and not t["name"].startswith("grpo_r1_")]
        bits = lambda text: [int(c) for c in text]  # "0110..": each problem right or wrong
        tests = [(t["name"], st.paired_bootstrap(bits(t["correct_truncated"]), bits(t["correct"])),
                  st.mcnemar(bits(t["correct_truncated"]), bits(t["correct"]))["p_value"])
                 for t in cut]
        if tests:  # each run's own interval; the row's is the worst run's
            shown = all(e["interval"][0] >= -st.EQUIVALENCE for _, e, _ in tests)
            refuted = any(e["interval"][1] < -st.EQUIVALENCE for _, e, _ in tests)
            worst = min(tests, key=lambda x: x[1]["interval"][0])[1]
            measured = "; ".join(f"{n.split(' (')[0]}: {e['estimate']:+.3f} "
                                 f"[{e['interval'][0]:+.3f}, {e['interval'][1]:+.3f}] "
                                 f"(McNemar p {p:.2g})"
                                 for n, e, p in tests)
            points = [dict(run=n.split(" (")[0], estimate=e["estimate"], interval=e["interval"],
                           mcnemar_p=p) for n, e, p in tests]
            rows.append(row("rank1_truncation", GEOMETRY_CLAIMS["rank1_truncation"], TRAJ,
                            measured + f" ({trunc['eval_limit']} test problems)",
                            worst["interval"], "paired by problem (bootstrap), McNemar beside",
                            0, "", "holds" if shown else "does not hold" if refuted
                            else "inconclusive", margin=st.EQUIVALENCE, points=points))
    return rows
