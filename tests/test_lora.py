"""lora.py: identity at init, frozen base, merge, PEFT interop both ways, factored geometry, Adam's symmetry."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import factored
from adapters import load_factors
from conftest import assert_same_tokens
from factored import combine, factored_inner, lora_factors, set_factors, truncate
from lora import (LoRALinear, adapters_disabled, apply_lora, load_adapter, lora_modules, lora_param_count,
                  merge_lora, parse_layers, save_adapter)
from model import Qwen2, Qwen2Config, TOY_CONFIG, load_model

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
MICRO = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def randomize_B(model, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


def toy(toy_dir):
    return load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False)


def ids_for(vocab, B=2, T=16, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def lm_loss(model, ids):
    logits = model(ids[:, :-1])                                            # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


# -----------------------------------------------------------------------------
# The module: identity, frozen base, merge, switch


def test_fresh_adapter_is_identity(toy_dir):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    with torch.no_grad():
        before = m(ids)
        apply_lora(m, 4, 32)
        assert torch.equal(m(ids), before)
    assert len(lora_modules(m)) == 7 * TOY_CONFIG.num_hidden_layers


def test_one_adam_step_moves_only_the_adapter(toy_dir):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    apply_lora(m, 2, 16)
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable), sorted(trainable)[:3]
    assert sum(p.numel() for p in trainable.values()) == lora_param_count(TOY_CONFIG, 2)
    A0 = {n: p.clone() for n, p in trainable.items() if n.endswith("lora_A")}
    opt = torch.optim.Adam(trainable.values(), lr=1e-2)
    lm_loss(m, ids).backward()
    opt.step()
    for name, p in m.named_parameters():
        if not p.requires_grad:  # base tensors live under .base.; HF names without it
            assert p.grad is None and torch.equal(p, base[name.replace(".base.", ".")]), name
    for name, mod in lora_modules(m).items():
        assert mod.lora_B.abs().min() > 0, f"{name}.lora_B did not move"
        # B = 0 makes A's first gradient exactly zero (dL/dA = s·Bᵀ(...)), so Adam leaves A put
        assert torch.equal(mod.lora_A, A0[name + ".lora_A"]), name


def test_merged_equals_unmerged(toy_dir):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    hf_names = set(m.state_dict())
    with torch.no_grad():
        base = m(ids)
        apply_lora(m, 4, 32, layers="middle")
        randomize_B(m)
        unmerged = m(ids)
        merged = merge_lora(m)(ids)
    assert rel_err(unmerged, base) > 1e-3  # the adapter does something
    assert rel_err(merged, unmerged) < 1e-5
    assert not lora_modules(m) and set(m.state_dict()) == hf_names


def test_adapters_disabled_is_the_base(toy_dir):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    with torch.no_grad():
        base = m(ids)
        apply_lora(m, 2, 8)
        randomize_B(m)
        adapted = m(ids)
        with adapters_disabled(m):
            assert torch.equal(m(ids), base)
        assert torch.equal(m(ids), adapted)


def test_bf16_base_keeps_float32_adapter(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.bfloat16, verbose=False)
    apply_lora(m, 1, 32, targets="mlp")
    mod = next(iter(lora_modules(m).values()))
    assert mod.lora_A.dtype == mod.lora_B.dtype == torch.float32 and mod.base.weight.dtype == torch.bfloat16
    logits = m(ids_for(TOY_CONFIG.vocab_size))
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert mod.lora_B.grad.dtype == torch.float32 and mod.lora_B.grad.abs().sum() > 0

# -----------------------------------------------------------------------------
# Which matrices, how many parameters


def test_parameter_counts():
    qwen3b = Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2)
    assert lora_param_count(qwen3b, 1) == 1_870_848  # docs/design.md
    assert lora_param_count(qwen3b, 8, "attn") + lora_param_count(qwen3b, 8, "mlp") == lora_param_count(qwen3b, 8)
    m = Qwen2(Qwen2Config(**TINY))
    apply_lora(m, 3, 6, targets="q_proj,down_proj", layers=[0, 2], verbose=False)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == \
        lora_param_count(m.config, 3, ["q_proj", "down_proj"], [0, 2]) == 2 * 3 * ((64 + 64) + (160 + 64))


def test_layer_thirds():
    assert parse_layers("first", 36) == list(range(12))
    assert parse_layers("middle", 36) == list(range(12, 24))
    assert parse_layers("last", 36) == list(range(24, 36))
    assert [len(parse_layers(t, 28)) for t in ("first", "middle", "last")] == [9, 10, 9]  # remainder to the middle
    assert parse_layers("first,last", 3) == [0, 2] and parse_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="first"):
        parse_layers("first", 2)
    with pytest.raises(ValueError, match="bad layer"):
        parse_layers([3], 3)


def test_bad_rank_and_target_refused():
    m = Qwen2(MICRO)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="rank"):
            apply_lora(m, bad, 8)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)
    with pytest.raises(ValueError, match="rank"):
        truncate({}, 0)
    with pytest.raises(ValueError, match="lm_head"):
        apply_lora(m, 1, 8, targets="all,lm_head")
    assert not lora_modules(m)

# -----------------------------------------------------------------------------
# Files: our round trip, bad input, PEFT both ways


def test_save_load_round_trip(toy_dir, tmp_path):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    apply_lora(m, 3, 12, targets="attn", layers="last")
    randomize_B(m)
    save_adapter(m, str(tmp_path), base_model_name_or_path=toy_dir)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", "CAUSAL_LM", 3, 12)
    last = parse_layers("last", TOY_CONFIG.num_hidden_layers)                  # [4, 5] of 6 layers
    assert cfg["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and cfg["layers_to_transform"] == last
    keys = load_file(str(tmp_path / "adapter_model.safetensors")).keys()
    assert f"base_model.model.model.layers.{last[0]}.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 4 * len(last)
    other = toy(toy_dir)
    load_adapter(other, str(tmp_path))  # applies the modules the config describes
    with torch.no_grad():
        assert torch.equal(other(ids), m(ids))
    dense = lambda f: {n: s * B @ A for n, (s, B, A) in f.items()}
    want, got = dense(lora_factors(m)), dense(load_factors(str(tmp_path)))
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)


def test_load_into_existing_adapters(toy_dir, tmp_path):
    m = toy(toy_dir)
    apply_lora(m, 2, 8, verbose=False)
    randomize_B(m)
    save_adapter(m, str(tmp_path))
    same = load_adapter(apply_lora(toy(toy_dir), 2, 8, verbose=False), str(tmp_path))  # resume: fill in place
    assert all(torch.equal(same.get_submodule(n).lora_B, mod.lora_B) for n, mod in lora_modules(m).items())
    with pytest.raises(ValueError, match="rank 2"):
        load_adapter(apply_lora(toy(toy_dir), 4, 8, verbose=False), str(tmp_path))


def test_bad_adapter_files_name_the_tensor(toy_dir, tmp_path):
    m = toy(toy_dir)
    apply_lora(m, 2, 8, verbose=False)
    save_adapter(m, str(tmp_path))
    path = str(tmp_path / "adapter_model.safetensors")
    good = load_file(path)
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    save_file({**good, key: torch.zeros(2, 999)}, path)  # an adapter for some other model's shapes
    with pytest.raises(ValueError, match=f"{key}.*\\(2, 999\\).*\\(2, {TOY_CONFIG.intermediate_size}\\)"):
        load_adapter(toy(toy_dir), str(tmp_path), verbose=False)
    save_file({k: v for k, v in good.items() if k != key}, path)
    with pytest.raises(ValueError, match="down_proj.lora_A"):
        load_adapter(toy(toy_dir), str(tmp_path), verbose=False)
    with pytest.raises(ValueError, match="adapter_config.json"):  # errors.UserError
        load_adapter(toy(toy_dir), str(tmp_path / "nowhere"))


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


@pytest.mark.parametrize("rank,alpha,targets,layers,rslora",
                         [(2, 8, "all", None, False), (3, 5, "attn,up_proj", "first,last", True)])
def test_our_adapter_loads_in_peft(tmp_path, rank, alpha, targets, layers, rslora):
    peft = pytest.importorskip("peft")
    hf, base = tiny_hf(tmp_path)
    m, ids = load_model(base, device="cpu", dtype=torch.float32, verbose=False), ids_for(TINY["vocab_size"], T=23)
    with torch.no_grad():
        plain = m(ids)
        apply_lora(m, rank, alpha, targets, layers, rslora)
        randomize_B(m, seed=1)
        ours = m(ids)
    save_adapter(m, str(tmp_path / "adapter"), base_model_name_or_path=base)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    assert rel_err(ours, plain) > 1e-3
    assert_same_as_peft(ours, theirs, alpha / (rank ** 0.5 if rslora else rank))


def assert_same_as_peft(ours, theirs, scale):
    """lora.py scales the rank-r intermediate by α/r, PEFT the adapter's output: the same logits
    bit for bit when α/r is a power of 2 (an exact multiply either way), else to float rounding."""
    if math.log2(scale).is_integer():
        assert torch.equal(ours, theirs), rel_err(ours, theirs)
    else:
        assert rel_err(ours, theirs) < 1e-6, rel_err(ours, theirs)


def test_peft_adapter_loads_here(tmp_path):
    peft = pytest.importorskip("peft")
    hf, base = tiny_hf(tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                             layers_to_transform=[1, 2], init_lora_weights=False, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, config).eval()
    pm.save_pretrained(str(tmp_path / "peft"))
    ids = ids_for(TINY["vocab_size"], T=23)
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    m = load_model(base, device="cpu", dtype=torch.float32, verbose=False)
    load_adapter(m, str(tmp_path / "peft"))
    assert sorted(lora_modules(m)) == sorted(f"model.layers.{i}.{b}.{t}" for i in (1, 2) for b, t in
                                             (("self_attn", "q_proj"), ("self_attn", "v_proj"), ("mlp", "down_proj")))
    with torch.no_grad():
        ours = m(ids)
        with adapters_disabled(m):
            assert rel_err(m(ids), theirs) > 1e-3  # PEFT's adapter is not the identity
    assert_same_as_peft(ours, theirs, 16 / 4)

# -----------------------------------------------------------------------------
# Factored effective updates equal their dense computations


def random_factors(rank, scale, seed, shapes=((48, 32), (32, 80), (16, 32))):
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}": (scale, torch.randn(o, rank, generator=g), torch.randn(rank, n, generator=g))
            for i, (o, n) in enumerate(shapes)}


def dense(factors):
    return {n: s * B.double() @ A.double() for n, (s, B, A) in factors.items()}


def test_factored_inner_and_combine_match_dense():
    f1, f2 = random_factors(1, 32.0, 0), random_factors(5, 0.7, 1)  # ranks differ, the vector length does not
    d1, d2 = dense(f1), dense(f2)
    want = sum((d1[n] * d2[n]).sum() for n in d1).item()
    assert abs(factored_inner(f1, f2) - want) <= 1e-12 * abs(want)
    del f2["m2"]  # a matrix only one side adapts contributes nothing
    assert abs(factored_inner(f1, f2) - (want - (d1["m2"] * d2["m2"]).sum().item())) <= 1e-12 * abs(want)
    mix = dense(combine([f1, f2], [0.3, -2.0]))
    for n in d1:
        ref = 0.3 * d1[n] + (-2.0 * d2[n] if n in f2 else 0)
        assert (mix[n] - ref).abs().max() <= 1e-12 * ref.abs().max(), n


def test_truncation_is_the_best_rank_k():
    summed = combine([random_factors(3, 2.0, 0), random_factors(4, -0.5, 1)], [1.0, 0.5])  # rank 7
    for k in (1, 3):
        got = dense(truncate(summed, k))
        for n, W in dense(summed).items():
            U, S, Vh = torch.linalg.svd(W)
            best = U[:, :k] * S[:k] @ Vh[:k]
            assert (got[n] - best).abs().max() <= 1e-10 * W.abs().max(), (n, k)
    padded = truncate(summed, 9)  # more than the rank: exact, zero-padded to rank 9
    assert padded["m0"][1].shape == (48, 9) and padded["m0"][2].shape == (9, 32)
    assert all((dense(padded)[n] - W).abs().max() < 1e-10 * W.abs().max() for n, W in dense(summed).items())


def test_set_factors_installs_a_truncated_sum(toy_dir, tmp_path):
    m, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size)
    apply_lora(m, 4, 32, verbose=False)
    randomize_B(m, seed=1)
    f1 = lora_factors(m)
    randomize_B(m, seed=2)
    point = truncate(combine([f1, lora_factors(m)], [0.5, 0.5]), 2)  # a plane point, cut to rank 2
    rng = torch.get_rng_state()
    set_factors(m, point)
    assert torch.equal(torch.get_rng_state(), rng), "set_factors consumed random numbers"
    assert all(mod.rank == 2 and mod.scale == 1.0 for mod in lora_modules(m).values())
    want = dense(point)
    assert all((dense(lora_factors(m))[n] - want[n]).abs().max() < 1e-6 for n in want)
    save_adapter(m, str(tmp_path))  # scale 1 at rank 2 is alpha 2
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_alpha"] == 2
    other = toy(toy_dir)
    with torch.no_grad():
        for n, W in want.items():
            other.get_submodule(n).weight += W.float()
        assert rel_err(m(ids), other(ids)) < 1e-5

# -----------------------------------------------------------------------------
# The science: Adam leaves two of LoRA's four knobs, and α/r makes early training rank-free


def micro(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return Qwen2(MICRO).to(dtype), ids_for(MICRO.vocab_size, B=4, T=12, seed=seed)


def train_micro(rank, scale, lr_A, lr_B, A_mult=1.0, steps=8, seed=0, dtype=torch.float64):
    """Adam (ε ≈ 0, no weight decay) on a fixed batch; returns losses and factors."""
    m, ids = micro(seed, dtype)
    apply_lora(m, rank, scale * rank, verbose=False)
    mods = list(lora_modules(m).values())
    for mod in mods:
        mod.lora_A.data, mod.lora_B.data = mod.lora_A.data.to(dtype) * A_mult, mod.lora_B.data.to(dtype)
    # ε = 0 exactly would divide A's first (exactly zero) gradient by zero
    opt = torch.optim.Adam([{"params": [x.lora_A for x in mods], "lr": lr_A},
                            {"params": [x.lora_B for x in mods], "lr": lr_B}], eps=1e-30, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = lm_loss(m, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64), lora_factors(m)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_adam_two_degrees_of_freedom(dtype, tol):
    # (α, σ_A, η_A, η_B) -> (α/(pq), p·σ_A, p·η_A, q·η_B): A_t -> p·A_t, B_t -> q·B_t, (α/r)·B·A unchanged.
    # (float64 often agrees exactly: RMSNorm's float32 statistics round the tiny differences away.)
    p, q, s, lr = 3.0, 0.1, 16.0, 1e-2
    ref, _ = train_micro(2, s, lr, lr, dtype=dtype)
    moved, _ = train_micro(2, s / (p * q), p * lr, q * lr, A_mult=p, dtype=dtype)
    only_alpha, _ = train_micro(2, s / (p * q), lr, lr, dtype=dtype)
    err, control = ((moved - ref).abs() / ref).max().item(), ((only_alpha - ref).abs() / ref).max().item()
    print(f"invariance ({dtype}): max relative loss difference {err:.1e} over {len(ref)} steps; "
          f"changing alpha alone: {control:.1e}")
    assert ref[-1] < ref[0] - 0.05, ref  # it trains
    assert err < tol and control > 1e-3


def test_alpha_over_r_makes_early_training_rank_free():
    # Compare the first 5 steps' update along the full-weight gradient at init (the part that moves
    # the loss) for ranks 1, 4, 16. With α/r it is about the same; with a fixed scale it grows ~r.
    # (The Frobenius norm of (α/r)·B·A falls like 1/√r: the rest of the update is noise r
    # random directions average away.)
    m0, ids = micro(0)
    lm_loss(m0, ids).backward()
    G = {n.removesuffix(".weight"): p.grad for n, p in m0.named_parameters() if n.endswith("proj.weight")}
    gnorm = sum((g ** 2).sum() for g in G.values()).sqrt().item()

    def along(rank, scale):
        _, f = train_micro(rank, scale, 1e-3, 1e-3, steps=5, seed=0)
        d = dense(f)
        return -sum((d[n] * G[n]).sum() for n in d).item() / gnorm, sum((w ** 2).sum() for w in d.values()).sqrt().item()

    res = {r: along(r, 32.0 / r) for r in (1, 4, 16)}
    ratios = [res[r][0] / res[1][0] for r in (4, 16)]
    fixed16 = along(16, 32.0)[0] / res[1][0]
    print(f"alpha/r: along-gradient ratios r4/r1, r16/r1 = {ratios[0]:.2f}, {ratios[1]:.2f}; Frobenius "
          f"ratios {res[4][1] / res[1][1]:.2f}, {res[16][1] / res[1][1]:.2f}; fixed scale r16/r1 = {fixed16:.2f}")
    assert all(0.75 < x < 1.33 for x in ratios), ratios
    assert fixed16 > 4, fixed16


# -----------------------------------------------------------------------------
# Many adapters in one batch: per-row weights over stacked factors


def test_row_weights_equal_separate_adapters(toy_dir):
    """Row b of a batch under row_weights is the adapter Σ_i w[b, i]·ΔW_i installed alone (set_factors
    of factored.combine), to float rounding: on a forward, and through generate() while rows finish
    early and leave the batch, and fan out to n samples."""
    from sampler import generate
    sets = []
    torch.manual_seed(0)  # A's init: the same adapters whatever ran before
    for k, (r, targets) in enumerate([(1, "all"), (3, "all"), (2, "attn")]):  # the last adapts 4 of 7 matrices
        m = apply_lora(toy(toy_dir), r, 16, targets, verbose=False)
        randomize_B(m, std=0.2, seed=k)
        sets.append(lora_factors(m))
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, -1.7, 0.61], [0.0, 0.0, 0.0], [0.0, 0.0, 1.3]])
    net, ids = toy(toy_dir), ids_for(TOY_CONFIG.vocab_size, B=len(W), T=12)
    with torch.no_grad():
        base = net(ids)
        factored.set_stacked(net, sets)
        with factored.row_weights(net, W):
            batched = net(ids)
        assert all(m.rows is None for m in lora_modules(net).values())  # the weights last one context
        for b, w in enumerate(W):
            alone = set_factors(toy(toy_dir), combine(sets, w.tolist()))(ids[b:b + 1])
            assert rel_err(batched[b], alone[0]) < 1e-5, b
            assert rel_err(alone[0], base[b]) > 1e-2 or b == 3, b   # the adapters do change the logits
        assert torch.equal(batched[3], base[3])                         # w = 0 is the base model exactly
    # generate(): rows leave the batch as they stop (a stop token that some rows hit early), and n > 1
    prompts = [[5, 6, 7], [40, 41, 42, 43], [100], [9, 9, 9, 9, 9], [17, 3]]
    def alone(stop):
        out = []
        for p, w in zip(prompts, W):
            with factored.row_weights(net, w[None]) as rows:
                out.append(generate(net, [p], 12, temperature=0, stop_ids=stop, row_state=[rows])[0])
        return out
    free = alone([])
    stop = [free[1][0], free[2][5]]                    # tokens we know will appear: some rows stop early
    with factored.row_weights(net, W) as rows:
        together = generate(net, prompts, 12, temperature=0, stop_ids=stop, row_state=[rows])
    with factored.row_weights(net, W) as rows:
        fanned = generate(net, prompts, 12, temperature=0, stop_ids=stop, row_state=[rows], n=2)
    alone = alone(stop)

    def logits(i, prefix):  # row i of `alone`: prompt i at its own point W[i]
        with torch.no_grad(), factored.row_weights(net, W[i % len(W)][None]):
            return net(torch.tensor([prompts[i % len(W)] + prefix]))[0, -1]
    assert_same_tokens(together, alone, logits)
    assert_same_tokens(fanned[::2], alone, logits)
    assert_same_tokens(fanned[1::2], alone, logits)
    assert len({len(c) for c in alone}) > 1 and len(set(map(tuple, alone))) == len(alone), alone  # not trivial


def test_merged_inference_equals_the_adapters_and_restores_them(toy_dir):
    """lora.merged: inference through W + ΔW as one matrix gives the adapters' logits to float
    rounding, puts the very same modules back, and leaves a disabled adapter (or a bf16 base,
    whose rounding would eat ΔW) unmerged."""
    from lora import merged
    m = load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False)
    apply_lora(m, 2, 32, verbose=False)
    randomize_B(m, seed=3)
    ids = ids_for(m.config.vocab_size, T=11)
    before = dict(lora_modules(m))
    with torch.no_grad():
        adapted = m(ids)
        with merged(m):
            assert not lora_modules(m), "every adapter should be folded into a plain nn.Linear"
            folded = m(ids)
        with adapters_disabled(m), merged(m):
            assert len(lora_modules(m)) == len(before), "a disabled adapter is not merged"
            assert rel_err(m(ids), adapted) > 1e-3
        again = m(ids)
    assert all(a is b for a, b in zip(lora_modules(m).values(), before.values()))
    assert rel_err(folded, adapted) < 1e-5 and torch.equal(again, adapted)
    half = load_model(toy_dir, device="cpu", dtype=torch.bfloat16, verbose=False)
    apply_lora(half, 2, 32, verbose=False)
    with merged(half):
        assert len(lora_modules(half)) == len(before), "a bf16 base samples through its adapters"
