"""LoRA-XS and TinyLoRA: trainable counts, identity at init, dense references, PEFT's TINYLORA files
both ways, LoRA-XS served as plain LoRA, factored updates, geometry, flops counts, an exact GRPO resume."""
import json
import os
import runpy
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import adapters
import tinylora
import flops
import gsm8k
from adapters import load_factors
from factored import lora_factors
from lora import adapter_kind, adapter_modules, adapters_disabled, merge_lora
from tinylora import apply_loraxs, apply_tinylora, tinylora_groups
from model import TOY_CONFIG, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def toy(path):
    return load_model(path, device="cpu", dtype=torch.float32, verbose=False)


def ids_for(vocab, B=2, T=16, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def randomize(model, std, seed=1):
    """Give the trainable tensors (R or v) values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def apply(kind, model, **kw):
    return apply_loraxs(model, 2, verbose=False, **kw) if kind == "loraxs" else \
        apply_tinylora(model, 5, tie=0.5, verbose=False, **kw)


STD = {"loraxs": 0.3, "tinylora": 0.3}

# -----------------------------------------------------------------------------
# The modules


def test_u13_fully_tied_trains_exactly_13_parameters(toy_dir):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    base = {k: v.clone() for k, v in m.state_dict().items() if "tinylora" not in k}
    apply_tinylora(m, 13, tie=1.0, verbose=False)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 13 and len(trainable) == 1
    assert flops.count_tinylora_params(TOY_CONFIG, 13, 1.0) == 13
    mods = list(adapter_modules(m).values())
    assert len(mods) == 7 * TOY_CONFIG.num_hidden_layers and all(mod.tinylora_v is trainable[0] for mod in mods)
    opt = torch.optim.Adam(trainable, lr=1e-2)
    logits = m(ids[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert trainable[0].grad.abs().min() > 0, "v = 0 must still get a gradient (B and A are not zero)"
    opt.step()
    assert trainable[0].abs().min() > 0
    for name, t in m.state_dict().items():  # the base and the frozen SVD factors stay put
        if "tinylora_v" not in name and "tinylora" not in name:
            assert torch.equal(t, base[name.replace(".base.", ".")]), name


@pytest.mark.parametrize("kind", ["loraxs", "tinylora"])
def test_fresh_adapter_is_identity_and_switches_off(toy_dir, kind):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    with torch.no_grad():
        before = m(ids)
        apply(kind, m)
        assert adapter_kind(m) == kind
        assert torch.equal(m(ids), before)
        randomize(m, STD[kind])
        assert rel_err(m(ids), before) > 1e-3
        with adapters_disabled(m):
            assert torch.equal(m(ids), before)


def test_tinylora_grouping_is_contiguous_and_peft_rounded():
    assert tinylora_groups(21, 0.0) == list(range(21))
    assert tinylora_groups(21, 1.0) == [0] * 21
    # round(10.5) = 10 groups of 2, the last takes 3 (what PEFT 0.21 assigns, printed by its modules)
    assert tinylora_groups(21, 0.5) == [i // 2 for i in range(18)] + [9, 9, 9]
    assert tinylora_groups(7, 0.5) == [0, 1, 2, 3, 3, 3, 3]  # round(3.5) = 4, groups of 7 // 4 = 1
    with pytest.raises(ValueError, match="tying"):
        tinylora_groups(7, 1.5)


@pytest.mark.parametrize("kind", ["loraxs", "tinylora"])
def test_factored_update_equals_dense_reference(toy_dir, tmp_path, kind):
    """ΔW from the paper's formula on a fresh float64 SVD of W: equal to the module's, its factors,
    load_factors of its file and geometry's lazy reader; and a dense model W + ΔW gives its logits."""
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    ref = toy(toy_dir)
    apply(kind, m, targets="attn,down_proj", layers="0,2")
    randomize(m, STD[kind])
    adapters.save(m, str(tmp_path / kind))
    factors, from_file, lazy = lora_factors(m), load_factors(str(tmp_path / kind)), adapters.SavedFactors(tmp_path / kind)
    assert sorted(from_file) == sorted(lazy) == sorted(factors) == sorted(adapter_modules(m))
    for name, mod in adapter_modules(m).items():
        W = ref.get_submodule(name).weight
        U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        U, S, Vh = U[:, :2], S[:2], Vh[:2]
        # the SVD's signs are arbitrary: align each singular pair with the module's (flipping u_i
        # and v_i together leaves W alone)
        A = mod.loraxs_A if kind == "loraxs" else mod.tinylora_A
        sign = torch.sign((A.double() * Vh).sum(1))                       # (r,)
        U, Vh = U * sign, Vh * sign[:, None]
        if kind == "loraxs":
            dW = U @ torch.diag(S) @ mod.loraxs_R.double() @ Vh           # U_r Σ_r R V_rᵀ (LoRA-XS eq. 2)
        else:
            R = sum(v * P for v, P in zip(mod.tinylora_v.double(), mod.tinylora_P.double()))
            dW = U @ torch.diag(S.sqrt()) @ R @ torch.diag(S.sqrt()) @ Vh  # PEFT's split of Σ
        # the module's SVD is float32 (as PEFT's): its singular vectors carry ~1e-5 relative error
        assert rel_err(mod.delta_weight(), dW) < 1e-4, name
        for s, B, A in (factors[name], from_file[name], lazy[name]):
            assert rel_err(s * B.double() @ A.double(), mod.delta_weight()) < 1e-6, name
        with torch.no_grad():
            W += dW.float()
    with torch.no_grad():
        ours, dense = m(ids), ref(ids)
    assert rel_err(ours, dense) < 1e-4
    print(f"{kind} vs dense W + ΔW: relative logits error {rel_err(ours, dense):.1e}")


@pytest.mark.parametrize("kind", ["loraxs", "tinylora"])
def test_save_load_round_trip_and_resume_state(toy_dir, tmp_path, kind):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    apply(kind, m, layers="1,2")
    randomize(m, STD[kind])
    with torch.no_grad():
        want = m(ids)
    adapters.save(m, str(tmp_path / "a"))
    for fresh in (True, False):  # into a bare model, and into adapters applied first (a resume)
        other = toy(toy_dir)
        if not fresh:
            apply(kind, other, layers="1,2")
        adapters.load(other, str(tmp_path / "a"), verbose=False)
        with torch.no_grad():
            assert torch.equal(other(ids), want)
        got = dict(other.named_parameters())
        assert all(torch.equal(p, got[n]) for n, p in m.named_parameters() if p.requires_grad)
    wrong = toy(toy_dir)
    apply_loraxs(wrong, 3, verbose=False) if kind == "loraxs" else apply_tinylora(wrong, 4, verbose=False)
    with pytest.raises(ValueError, match="differ"):
        adapters.load(wrong, str(tmp_path / "a"))


def test_loraxs_folder_is_a_plain_lora_adapter(toy_dir, tmp_path):
    """Without loraxs.safetensors (what PEFT and vLLM read) the folder is a LoRA of the same ΔW;
    a sidecar that disagrees with the LoRA file is refused."""
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    apply_loraxs(m, 2, verbose=False)
    randomize(m, 0.3)
    with torch.no_grad():
        want = m(ids)
    adapters.save(m, str(tmp_path / "a"))
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 2
    shutil.copytree(tmp_path / "a", tmp_path / "plain")
    os.remove(tmp_path / "plain" / tinylora.LORAXS_FILE)
    plain = adapters.load(toy(toy_dir), str(tmp_path / "plain"), verbose=False)
    assert adapter_kind(plain) == "lora"
    with torch.no_grad():
        assert rel_err(plain(ids), want) < 1e-6
    side = load_file(str(tmp_path / "a" / tinylora.LORAXS_FILE))
    key = next(k for k in side if k.endswith("loraxs_R"))
    side[key] = side[key] + 1.0
    from safetensors.torch import save_file
    save_file(side, str(tmp_path / "a" / tinylora.LORAXS_FILE))
    with pytest.raises(ValueError, match="disagree"):
        adapters.load(toy(toy_dir), str(tmp_path / "a"))

# -----------------------------------------------------------------------------
# PEFT interop (peft >= 0.19 has the TINYLORA tuner)


def tiny_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, rope_theta=1e6)).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for n, p in hf.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(str(tmp_path / "base"))
    return hf, str(tmp_path / "base")


def peft_tinylora():
    peft = pytest.importorskip("peft")
    if not hasattr(peft, "TinyLoraConfig"):
        pytest.skip(f"peft {peft.__version__} has no TINYLORA tuner (needs >= 0.19)")
    return peft


@pytest.mark.parametrize("u,tie,targets,layers", [(3, 0.0, "all", None), (4, 0.5, "attn,up_proj", "0,2")])
def test_our_tinylora_loads_in_peft(tmp_path, u, tie, targets, layers):
    peft = peft_tinylora()
    hf, base = tiny_hf(tmp_path)
    m, ids = toy(base), ids_for(TINY["vocab_size"], T=23)
    apply_tinylora(m, u, 2, tie, targets, layers, verbose=False)
    randomize(m, 0.3)
    with torch.no_grad():
        ours = m(ids)
        with adapters_disabled(m):
            assert rel_err(ours, m(ids)) > 1e-3
    adapters.save(m, str(tmp_path / "ours"), base_model_name_or_path=base)
    # PEFT's own construction from the same config: the same A, B, P and groups as ours
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    fresh = peft.get_peft_model(hf, peft.TinyLoraConfig(**{k: cfg[k] for k in (
        "r", "u", "weight_tying", "projection_seed", "target_modules", "layers_to_transform", "layers_pattern")}))
    theirs_sd = peft.get_peft_model_state_dict(fresh)
    mine = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert theirs_sd.keys() == mine.keys()
    for k in mine:
        if "tinylora_v" not in k:
            assert torch.equal(mine[k], theirs_sd[k]), k  # the same float32 SVD and generator: the same bits
    groups = {n.removeprefix("base_model.model."): mod._tinylora_v_key["default"] for n, mod in fresh.named_modules()
              if hasattr(mod, "_tinylora_v_key")}
    assert groups == {n: str(mod.group) for n, mod in adapter_modules(m).items()}
    fresh.unload()  # take PEFT's layers off hf again
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ours")).eval()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    err, abs_err = rel_err(ours, theirs), (ours - theirs).abs().max().item()
    print(f"TinyLoRA ours -> PEFT (u {u}, tie {tie}): max |Δlogits| {abs_err:.1e}, relative {err:.1e}")
    assert err < 1e-5


@pytest.mark.parametrize("save_projection", [True, False])
def test_peft_tinylora_loads_here(tmp_path, save_projection):
    peft = peft_tinylora()
    hf, base = tiny_hf(tmp_path)
    config = peft.TinyLoraConfig(r=2, u=7, weight_tying=0.5, target_modules="all-linear", init_weights="uniform",
                                 init_v_bound=0.5, save_projection=save_projection, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, config).eval()
    pm.save_pretrained(str(tmp_path / "peft"))
    ids = ids_for(TINY["vocab_size"], T=23)
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    m = toy(base)
    adapters.load(m, str(tmp_path / "peft"), verbose=False)
    assert adapter_kind(m) == "tinylora" and len(adapter_modules(m)) == 7 * TINY["num_hidden_layers"]
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 7 * round(21 * 0.5)
    with torch.no_grad():
        ours = m(ids)
        with adapters_disabled(m):
            assert rel_err(m(ids), theirs) > 1e-3  # PEFT's adapter is not the identity
    err, abs_err = rel_err(ours, theirs), (ours - theirs).abs().max().item()
    print(f"TinyLoRA PEFT -> ours (u 7, tie 0.5, save_projection {save_projection}): "
          f"max |Δlogits| {abs_err:.1e}, relative {err:.1e}")
    assert err < 1e-5
    f = load_factors(str(tmp_path / "peft"))  # and its factored update is the live one
    live = lora_factors(m)
    assert all(rel_err(f[n][1] @ f[n][2], live[n][1] @ live[n][2]) < 1e-6 for n in live)


def test_our_loraxs_loads_in_peft_as_lora(tmp_path):
    peft = pytest.importorskip("peft")
    hf, base = tiny_hf(tmp_path)
    m, ids = toy(base), ids_for(TINY["vocab_size"], T=23)
    apply_loraxs(m, 2, targets="attn,gate_proj", layers="1,2", verbose=False)
    randomize(m, 0.3)
    with torch.no_grad():
        ours = m(ids)
    adapters.save(m, str(tmp_path / "xs"), base_model_name_or_path=base)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "xs")).eval()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    err, abs_err = rel_err(ours, theirs), (ours - theirs).abs().max().item()
    print(f"LoRA-XS ours -> PEFT LoRA: max |Δlogits| {abs_err:.1e}, relative {err:.1e}")
    assert err < 1e-5

# -----------------------------------------------------------------------------
# Counts, and an exact resume through grpo.py


def test_flops_counts_match_the_modules(toy_dir):
    for u, tie in ((1, 1.0), (13, 1.0), (13, 0.5), (13, 0.0)):
        m = apply_tinylora(toy(toy_dir), u, tie=tie, targets="mlp", verbose=False)
        n = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert n == flops.count_tinylora_params(TOY_CONFIG, u, tie, "mlp"), (u, tie)
    m = apply_loraxs(toy(toy_dir), 3, verbose=False)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == flops.count_loraxs_params(TOY_CONFIG, 3) == 9 * 7 * TOY_CONFIG.num_hidden_layers
    qwen3b = flops.get_config("Qwen2.5-3B")
    assert flops.count_tinylora_params(qwen3b, 13, 1.0) == 13
    assert flops.count_tinylora_params(qwen3b, 13, 0.0) == 13 * 252
    assert flops.count_loraxs_params(qwen3b, 1) == 252


@pytest.mark.parametrize("adapter", ["tinylora", "loraxs"])
def test_grpo_kill_and_resume_is_exact(toy_dir, tmp_path, monkeypatch, adapter):
    monkeypatch.setattr(gsm8k, "reward", lambda completion, answer: float(len(completion) % 2))
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--toy", "--model", toy_dir, "--adapter", adapter, "--u", "3", "--tie", "0.5", "--batch", "2",
            "--group", "4", "--max-new-tokens", "8", "--eval-limit", "2", "--eval-batch-size", "2", "--device", "cpu",
            "--lr", "0.05", "--steps", "4", "--save-every", "2", "--eval-every", "0"]

    def run(argv):
        monkeypatch.setattr(sys, "argv", ["grpo.py", *argv])
        runpy.run_path(os.path.join(ROOT, "grpo.py"), run_name="__main__")
    run([*args, "--out", str(a)])
    shutil.copytree(a, b)
    shutil.rmtree(b / "step_000004")
    run([*args, "--out", str(b), "--resume"])
    for name in ("adapter_model.safetensors", "trainer_state.safetensors"):
        ta, tb = load_file(a / "step_000004" / name), load_file(b / "step_000004" / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f"{name} differs after resume"
    trained = load_factors(str(a / "step_000004"))
    assert any(B.abs().max() * A.abs().max() > 0 and (B @ A).abs().max() > 0 for _, B, A in trained.values()), "nothing trained"
    cfg = json.loads((a / "step_000004" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == ("TINYLORA" if adapter == "tinylora" else "LORA")


@pytest.mark.parametrize("adapter,rank,targets", [("tinylora", 2, "all"), ("loraxs", 3, "mlp")])
def test_step_flops_match_counter(adapter, rank, targets):
    """flops.step_flops for the frozen-A/B branch (dR only, no dA/dB) against torch's FLOP counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from model import Qwen2, Qwen2Config
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    m, (B, T) = Qwen2(cfg), (2, 24)
    adapters.apply(m, adapter, rank, u=3, targets=flops.TARGETS[targets], verbose=False)
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        m(ids).square().mean().backward()
    rows = flops.step_flops(cfg, B, T, rank, targets, adapter)
    assert abs(counter.get_total_flops() - flops.total(rows)) <= 1e-9 * flops.total(rows), \
        (counter.get_total_flops(), flops.total(rows))
    lora_rows = flops.step_flops(cfg, B, T, rank, targets)  # LoRA of the same rank also pays dA and dB
    assert flops.total(lora_rows) > flops.total(rows)


def test_bf16_base_keeps_float32_factors(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.bfloat16, verbose=False)
    apply_tinylora(m, 13, tie=1.0, targets="mlp", verbose=False)
    mod = next(iter(adapter_modules(m).values()))
    assert {t.dtype for t in (mod.tinylora_A, mod.tinylora_B, mod.tinylora_P, mod.tinylora_v)} == {torch.float32}
    logits = m(ids_for(TOY_CONFIG.vocab_size))
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert mod.tinylora_v.grad.dtype == torch.float32 and mod.tinylora_v.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["loraxs", "tinylora"])
def test_merged_equals_unmerged(toy_dir, kind):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    hf_names = set(toy(toy_dir).state_dict())
    apply(kind, m)
    randomize(m, STD[kind])
    with torch.no_grad():
        unmerged = m(ids)
        merged = merge_lora(m)(ids)
    assert not adapter_modules(m) and set(m.state_dict()) == hf_names
    assert rel_err(merged, unmerged) < 1e-5
