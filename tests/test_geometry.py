"""geometry.py: the factored Gram matrix, PCA, plane points and truncation equal dense numpy; the CLI's report."""
import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import adapters
import factored
import geometry_plane
import toy_task
import geometry
from conftest import assert_same_tokens
import lora
import runs
import versions
from model import TOY_CONFIG

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {lora.module_name(i, t): shape for i in range(TOY_CONFIG.num_hidden_layers)
          for t, shape in lora.projection_shapes(TOY_CONFIG).items()}  # (out, in) of every toy projection
DESIGN_KEYS = {"runs", "checkpoints", "explained_variance_ratio", "cosine_final", "norm", "update_to_weight"}


def write_run(root, name, rank, alpha, steps, seed, base="toy", targets=lora.ALL_LINEAR, layers=None, rslora=False):
    """A fake run folder in grpo.py's layout: args.json and step_XXXXXX/ PEFT adapters of random factors
    that drift step by step (so the trajectory has structure)."""
    g = torch.Generator().manual_seed(seed)
    layers = layers or list(range(TOY_CONFIG.num_hidden_layers))
    names = [lora.module_name(i, t) for i in layers for t in targets]
    run = Path(root) / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"task": "toy", "rank": rank}))
    A = {n: torch.randn(rank, SHAPES[n][1], generator=g) for n in names}
    B = {n: torch.zeros(SHAPES[n][0], rank) for n in names}
    for step in steps:
        for n in names:
            B[n] = B[n] + 0.01 * torch.randn(B[n].shape, generator=g)
            A[n] = A[n] + 0.1 * torch.randn(A[n].shape, generator=g)
        folder = run / f"step_{step:06d}"
        folder.mkdir()
        save_file({f"{lora.PEFT_PREFIX}{n}.lora_{p}.weight": (A if p == "A" else B)[n].contiguous()
                   for n in names for p in "AB"}, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
            "lora_dropout": 0.0, "bias": "none", "use_rslora": rslora, "fan_in_fan_out": False,
            "layers_to_transform": layers, "base_model_name_or_path": str(base)}))
    return run


def dense(factors):
    """The effective update as one float64 vector over every toy projection (zeros where not adapted)."""
    parts = []
    for n, (o, i) in SHAPES.items():
        s, B, A = factors.get(n, (0.0, torch.zeros(o, 1), torch.zeros(1, i)))
        parts.append((s * B.double() @ A.double()).numpy().ravel())
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, toy_dir):
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "r1", 1, 32, [10, 20, 30, 40], seed=1, base=toy_dir)
    write_run(root, "r4", 4, 16, [10, 20, 30], seed=2, base=toy_dir, rslora=True)
    write_run(root, "r2attn", 2, 8, [0, 20, 40], seed=3, base=toy_dir, targets=lora.ATTN, layers=[0, 2])
    (root / "toy_base").mkdir()                                       # not a run
    (root / "full" / "step_000010").mkdir(parents=True)               # full fine-tuning: no adapter
    (root / "full" / "step_000010" / "config.json").write_text("{}")
    return root


def load_all(runs_dir):
    found, notes = runs.find_runs(runs_dir, adapters_only=True)
    ckpts, updates = [], []
    for run in sorted(found):
        if found[run][0][0] != 0:
            ckpts.append((run, 0))
            updates.append({})
        for step, folder in found[run]:
            ckpts.append((run, step))
            updates.append(adapters.SavedFactors(folder))
    return ckpts, updates, notes


def dense_pca(U):
    """Centered PCA by SVD of the dense (N, D) matrix: scores, explained variance ratio, directions, mean.
    (torch's SVD: numpy's OpenBLAS threads spin for seconds on a busy 2-core machine.)"""
    mean = U.mean(0)
    _, S, Vt = (t.numpy() for t in torch.linalg.svd(torch.from_numpy(U - mean), full_matrices=False))
    k = int((S ** 2 > 1e-10 * S[0] ** 2).sum())
    return (U - mean) @ Vt[:k].T, S[:k] ** 2 / (S ** 2).sum(), Vt[:k], mean


def test_find_runs_skips_non_runs(runs_dir):
    found, notes = runs.find_runs(runs_dir, adapters_only=True)
    assert sorted(found) == ["r1", "r2attn", "r4"]
    assert any("toy_base" in n and "not a run" in n for n in notes), notes
    assert any("full" in n and "full fine-tuning" in n for n in notes), notes


def test_gram_and_pca_equal_dense(runs_dir):
    ckpts, updates, _ = load_all(runs_dir)
    assert len(ckpts) == 4 + 1 + 3 + 1 + 3  # origins added to r1 and r4; r2attn saved its step 0
    U = np.stack([dense(dict(u)) for u in updates])                  # (N, D) dense, toy only
    K = factored.gram(updates, progress=False)
    np.testing.assert_allclose(K, U @ U.T, rtol=1e-10, atol=1e-12 * np.abs(U @ U.T).max())
    scores, evr, coef = geometry.pca(K)
    d_scores, d_evr, _, _ = dense_pca(U)
    assert len(evr) == len(d_evr) and len(d_evr) >= 5
    np.testing.assert_allclose(evr, d_evr, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.abs(scores), np.abs(d_scores), rtol=1e-6, atol=1e-9 * np.abs(d_scores).max())
    ref_scores, ref_evr = geometry.reference_pca(U)  # the textbook form beside pca(), signed alike
    np.testing.assert_allclose(evr, ref_evr, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-9 * np.abs(ref_scores).max())
    # per run: the sub-Gram's PCA is that run's own dense PCA
    ix = [i for i, (r, _) in enumerate(ckpts) if r == "r4"]
    np.testing.assert_allclose(geometry.pca(K[np.ix_(ix, ix)])[1], dense_pca(U[ix])[1], rtol=1e-8)


def test_plane_point_is_the_dense_combination(runs_dir):
    _, updates, _ = load_all(runs_dir)
    factor_sets = [dict(u) for u in updates]
    U = np.stack([dense(f) for f in factor_sets])
    scores, _, coef = geometry.pca(factored.gram(updates, progress=False))
    d_scores, _, Vt, mean = dense_pca(U)
    signs = np.sign((scores[:, :2] * d_scores[:, :2]).sum(0))         # PCs are defined up to sign
    for a, b in [(0.0, 0.0), (1.5, -0.7), (-3.0, 2.0)]:
        point = factored.combine(factor_sets, geometry_plane.plane_weights(coef, a, b))
        want = mean + a * signs[0] * Vt[0] + b * signs[1] * Vt[1]
        np.testing.assert_allclose(dense(point), want, rtol=1e-8, atol=1e-10 * np.abs(want).max())


def test_truncation_is_the_dense_svd(runs_dir):
    _, updates, _ = load_all(runs_dir)
    factor_sets = [dict(u) for u in updates]
    point = factored.combine(factor_sets, np.linspace(-1, 1, len(factor_sets)))   # rank up to 22 per matrix
    point = {n: f for n, f in point.items() if n.startswith("model.layers.0.")}  # 7 matrices are enough
    k = 2
    trunc, kept, cos = geometry_plane.truncation(point, k)
    kept_num = total = 0.0
    for n, (s, B, A) in point.items():
        Uw, S, Vt = (t.numpy() for t in torch.linalg.svd(s * B @ A, full_matrices=False))  # of W (out, in)
        s_k, B_k, A_k = trunc[n]
        assert B_k.shape[1] == k and A_k.shape[0] == k
        np.testing.assert_allclose((s_k * B_k @ A_k).numpy(), (Uw[:, :k] * S[:k]) @ Vt[:k], atol=1e-10 * S[0])
        kept_num, total = kept_num + (S[:k] ** 2).sum(), total + (S ** 2).sum()
    assert math.isclose(kept, kept_num / total, rel_tol=1e-9), (kept, kept_num / total)
    assert math.isclose(cos, math.sqrt(kept_num / total), rel_tol=1e-9)  # a truncation is a projection
    assert 0.05 < kept < 0.99, kept                                   # the test is not trivial


def test_cli_writes_report_and_figures(runs_dir, toy_dir, tmp_path):
    out = tmp_path / "geo"
    res = subprocess.run([sys.executable, "geometry.py", str(runs_dir), "--out", str(out), "--components", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "full fine-tuning" in res.stdout and "not a run" in res.stdout
    rep = json.loads((out / "geometry.json").read_text())
    assert DESIGN_KEYS <= set(rep), set(rep)
    assert rep["runs"] == ["r1", "r2attn", "r4"]
    assert [(c["run"], c["step"]) for c in rep["checkpoints"][:6]] == \
        [("r1", 0), ("r1", 10), ("r1", 20), ("r1", 30), ("r1", 40), ("r2attn", 0)]
    assert all(len(c["pc"]) == 3 for c in rep["checkpoints"])
    np.testing.assert_allclose(rep["origin_pc"], rep["checkpoints"][0]["pc"][:2], atol=1e-9)  # r1's added origin
    evr = rep["explained_variance_ratio"]
    assert evr == sorted(evr, reverse=True) and math.isclose(sum(evr), 1.0, rel_tol=1e-9)
    assert np.allclose(np.diag(rep["cosine_final"]), 1.0)
    assert rep["norm"]["r4"][0] == [0, 0.0] and rep["norm"]["r4"][-1][0] == 30
    # ||ΔW||_F / ||W||_F over the adapted matrices, against the dense update and the base weights
    base = load_file(str(Path(toy_dir) / "model.safetensors"))
    last = adapters.SavedFactors(runs_dir / "r2attn" / "step_000040")
    w = math.sqrt(sum(base[f"{n}.weight"].double().pow(2).sum().item() for n in last))
    assert math.isclose(rep["update_to_weight"]["r2attn"], np.linalg.norm(dense(dict(last))) / w, rel_tol=1e-9)
    assert math.isclose(rep["norm"]["r2attn"][-1][1], np.linalg.norm(dense(dict(last))), rel_tol=1e-9)
    for png in ("trajectories", "distance", "explained_variance", "cosine"):
        assert (out / f"{png}.png").stat().st_size > 10_000, png


def test_cli_plane_and_truncation_run(runs_dir, tmp_path, monkeypatch):
    """The evaluation path end to end on the random toy model: tiny (2x2 grid, 2 problems, 4 tokens),
    and in-process (runpy) to spare a second interpreter start."""
    out = tmp_path / "geo"
    monkeypatch.setattr(sys, "argv", ["geometry.py", str(runs_dir), "--out", str(out), "--plane", "--grid", "2",
                                      "--truncate", "1", "--eval-limit", "2", "--max-new-tokens", "4", "--device", "cpu"])
    runpy.run_path(str(ROOT / "geometry.py"), run_name="__main__")
    rep = json.loads((out / "geometry.json").read_text())
    plane = rep["plane"]
    assert np.array(plane["accuracy"]).shape == (2, 2) and plane["eval_limit"] == 2
    assert plane["stacked_rank"] == 4 * 1 + 3 * 4 + 3 * 2           # every checkpoint's rank, stacked
    rows = rep["truncation"]["rows"]
    names = [r["name"].split()[0] for r in rows]
    assert names[:3] == ["r1", "r2attn", "r4"] and set(names[3:]) == {"plane"} and len(names) == 3 + 4  # 2x2: all 4 "best"
    assert len(plane["samples"]) == 4 and plane["points"] == 1 + 3 + 4  # base, finals, grid in one batched pass
    assert math.isclose(rows[0]["energy_kept"], 1.0, rel_tol=1e-9)  # a rank-1 run is its own rank-1 truncation
    assert rows[2]["energy_kept"] < 1.0
    assert (out / "plane.png").exists()


def test_batched_plane_equals_one_point_per_pass(tmp_path):
    """The shipped toy base plus small adapters: a 3x3 grid of plane points and the base scored all in
    one pass and one point per pass give the same accuracies, and the same tokens, point by point."""
    import eval_gsm8k
    from model import TOY_BASE, load_model, load_tokenizer
    write_run(tmp_path, "r1", 1, 0.4, [10, 20], seed=1, base=TOY_BASE)
    write_run(tmp_path, "r2", 2, 0.4, [10, 20], seed=2, base=TOY_BASE, targets=lora.MLP)
    ckpts, updates, _ = load_all(tmp_path)
    factor_sets = [dict(u) for u in updates]
    _, _, coef = geometry.pca(factored.gram(updates, progress=False))
    W = np.array([np.zeros(len(ckpts))] + [geometry_plane.plane_weights(coef, a, b) for a in (-30, 0, 30) for b in (-30, 0, 30)])
    net, tok = load_model(TOY_BASE, device="cpu", verbose=False), load_tokenizer(TOY_BASE)
    problems, stop = toy_task.toy_problems("test")[:16], eval_gsm8k.stop_ids(tok)
    one, right = geometry_plane.accuracies(net, tok, problems, factor_sets, W, 1, 32, 16, stop)
    batched, _ = geometry_plane.accuracies(net, tok, problems, factor_sets, W, len(W), 32, 16,
                                           stop)
    assert [r.count("1") / 16 for r in right] == one.tolist()  # each problem's result, recorded
    assert len(set(one.tolist())) >= 3, one                            # the grid is not flat: the test means something
    # the same tokens point by point (to a float-rounding tie), so the same accuracies
    prompts = [tok.encode(eval_gsm8k.format_prompt(p["question"])) for p in problems]
    kw = dict(batch_size=16, max_new_tokens=32, progress=False)
    together = eval_gsm8k.evaluate_points(net, tok, problems, W, **kw)
    diverged = 0
    for k, w in enumerate(W):
        alone = eval_gsm8k.evaluate_points(net, tok, problems, w[None], **kw)[0]
        a = [tok.encode(r["completion"]) for r in together[k][1]]
        b = [tok.encode(r["completion"]) for r in alone[1]]

        def logits(i, prefix):
            with torch.no_grad(), factored.row_weights(net, torch.as_tensor(w)[None].float()):
                return net(torch.tensor([prompts[i] + prefix]))[0, -1]
        assert_same_tokens(a, b, logits, at_least=len(a) - 2)
        diverged += sum(x != y for x, y in zip(a, b))
    assert np.abs(batched - one).max() <= diverged / len(problems), (batched, one)


def test_one_base_by_content(tmp_path):
    """Runs name their base by path: the same folder under two names, or a byte-identical copy (a run
    folder copied from another checkout) is one base; other weights, or another hub id, are not."""
    a, b, c = (tmp_path / n for n in "abc")
    for folder, w in ((a, 1.0), (b, 1.0), (c, 2.0)):
        folder.mkdir()
        save_file({"w": torch.full((4,), w)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"hidden_size": 4}')
    (tmp_path / "link").symlink_to(a)
    assert versions.same_model([str(a), str(tmp_path / "link")])
    assert versions.same_model([str(a), str(b), str(a)])
    assert not versions.same_model([str(a), str(c)])
    assert not versions.same_model([str(a), "Qwen/Qwen2.5-3B"]) and versions.same_model(["Qwen/Qwen2.5-3B"] * 2)


def test_a_run_folder_is_one_run_and_outputs_survive_a_full_disk(runs_dir, tmp_path, monkeypatch, capsys):
    """geometry.py given the folder a run printed reads it as one run; its own output folder is never
    a "not a run" note; and a disk that fills while the figures are written leaves the previous
    geometry.json and figures byte for byte as they were."""
    runs_dir = Path(shutil.copytree(runs_dir, tmp_path / "runs"))  # the fixture stays as it was

    def geometry_py(*argv):
        monkeypatch.setattr(sys, "argv", ["geometry.py", *map(str, argv)])
        runpy.run_path(str(ROOT / "geometry.py"), run_name="__main__")
    geometry_py(runs_dir / "r4", "--components", "2")                # the default out: r4/geometry/
    rep = json.loads((runs_dir / "r4" / "geometry" / "geometry.json").read_text())
    assert rep["runs"] == ["r4"] and "None" not in capsys.readouterr().out
    out = tmp_path / "geo"
    geometry_py(runs_dir, "--out", out)
    first = capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "geometry.json" in before and len(before) >= 5
    from matplotlib.figure import Figure
    real = Figure.savefig
    calls = []

    def disk_full(self, fname, *a, **k):  # the third figure's write fails half way
        calls.append(fname)
        if len(calls) == 3:
            Path(fname).write_bytes(b"\x89PNG half")
            raise OSError(28, "No space left on device", str(fname))
        return real(self, fname, *a, **k)
    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(SystemExit) as e:
        geometry_py(runs_dir, "--out", out)
    assert e.value.code == 2 and "No space left" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the previous outputs changed"
    monkeypatch.setattr(Figure, "savefig", real)
    geometry_py(runs_dir, "--out", out)                               # its output folder beside the runs
    geometry_py(runs_dir, "--out", runs_dir / "geometry")
    geometry_py(runs_dir, "--out", out)
    assert "geometry: " not in capsys.readouterr().out and "geometry:" not in first
