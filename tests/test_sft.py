"""sft.py: the loss mask, the chunked loss, batching, learning (LoRA and full), resume, the --toy smoke run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model as M
import sft
from toy_task import toy_problems
from lora import apply_lora

ROOT = Path(__file__).resolve().parents[1]
TINY = M.Qwen2Config(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4,
                     max_position_embeddings=256, bos_token_id=256, eos_token_id=256)


def toy_batch(n=8, seed=0):
    tok = M.toy_tokenizer()
    examples = sft.encode(tok, toy_problems("train", n=n, seed=seed))
    return tok, examples, sft.collate(examples, tok.pad_id, "cpu")


def test_mask_selects_exactly_the_solution_and_eos():
    tok, examples, (inputs, targets, mask) = toy_batch()
    for i, (p, s, flags) in enumerate(examples):
        assert flags == [True] * len(s)
        assert targets[i][mask[i]].tolist() == s, f"row {i}: masked targets are not the solution + eos"
        assert s[-1] == tok.eos_id
        L = len(p) + len(s)
        assert inputs[i, :L - 1].tolist() == (p + s)[:-1] and targets[i, :L - 1].tolist() == (p + s)[1:]
        assert tok.decode(targets[i][mask[i]].tolist()).startswith(" ") and "####" in tok.decode(s)


def test_prompt_targets_do_not_change_the_loss():
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    _, examples, (inputs, targets, mask) = toy_batch()
    loss = sft.sft_loss(model, inputs, targets, mask)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    changed = targets.clone()
    prompt = (~mask) & (torch.arange(targets.shape[1]) < len(examples[0][0]) - 1)  # prompt positions
    assert prompt.sum() > 50
    changed[prompt] = (changed[prompt] + 7) % 256                              # every prompt target wrong
    loss2 = sft.sft_loss(model, inputs, changed, mask)
    loss2.backward()
    assert loss2.item() == loss.item(), f"prompt targets changed the loss: {loss.item()} -> {loss2.item()}"
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters())), "prompt targets changed the gradient"
    changed = targets.clone()
    j = mask[0].nonzero()[0, 0]
    changed[0, j] = (changed[0, j] + 7) % 256                                  # one solution target wrong
    assert abs(sft.sft_loss(model, inputs, changed, mask).item() - loss.item()) > 1e-5  # and a solution one does


def test_chunked_loss_equals_plain_cross_entropy():
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    _, _, (inputs, targets, mask) = toy_batch()
    ref = torch.nn.functional.cross_entropy(model(inputs)[mask], targets[mask])
    for chunk in (7, 1024):  # several chunks (the last one short) and a single one
        got = sft.sft_loss(model, inputs, targets, mask, chunk_size=chunk)
        assert torch.allclose(got, ref, rtol=1e-5), f"chunk {chunk}: {got.item()} vs {ref.item()}"


def test_micro_batches_add_up_to_the_batch():
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    tok, examples, batch = toy_batch(n=6)
    full = sft.sft_loss(model, *batch)
    n_tokens = sum(len(s) for _, s, _ in examples)
    parts = [sft.sft_loss(model, *sft.collate(examples[i:i + 4], tok.pad_id, "cpu"), n_tokens) for i in (0, 4)]
    assert torch.allclose(sum(parts), full, rtol=1e-5), f"{sum(parts).item()} vs {full.item()}"


def test_epoch_batches_are_seeded_sorted_and_disjoint():
    lengths = [(i * 37) % 101 for i in range(1000)]
    a = sft.epoch_batches(lengths, 10, seed=0, epoch=0)
    assert a == sft.epoch_batches(lengths, 10, seed=0, epoch=0)
    assert a != sft.epoch_batches(lengths, 10, seed=0, epoch=1) and a != sft.epoch_batches(lengths, 10, seed=1, epoch=0)
    flat = [i for b in a for i in b]
    assert len(flat) == len(set(flat)) == 1000 and all(len(b) == 10 for b in a)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 15, f"batches are not length-sorted: mean length spread {spread:.1f} of 0..100"


def test_default_lr_follows_the_rule():
    qwen3b = M.Qwen2Config()  # the defaults are Qwen2.5-3B's shapes: hidden 2048, q/k/v bias
    lora, _ = sft.default_lr(qwen3b, lora=True)
    full, _ = sft.default_lr(qwen3b, lora=False)
    assert lora == pytest.approx(5e-4 * (2000 / 2048) ** 0.0775) and lora == pytest.approx(10 * full)


def train(model, batch, lr, steps):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    losses = []
    for _ in range(steps):
        loss = sft.sft_loss(model, *batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def tiny_base():
    """TINY after 25 full steps on 16 toy problems: past the random init, whose tied embeddings
    (std 0.02) cap the logits near uniform, something LoRA alone cannot undo."""
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    losses = train(model, toy_batch(n=16, seed=0)[2], 1e-2, 25)
    assert losses[-1] < 0.5 * losses[0], f"full training from scratch: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    return model.state_dict()


@pytest.mark.parametrize("rank,lr", [(4, 3e-3), (0, 1e-3)])
def test_loss_falls_on_new_problems(tiny_base, rank, lr):
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    model.load_state_dict(tiny_base)
    if rank:
        apply_lora(model, rank, 32, verbose=False)
    losses = train(model, toy_batch(n=8, seed=1)[2], lr, 30)
    assert losses[-1] < 0.9 * losses[0], f"rank {rank}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def run_sft(*args):
    r = subprocess.run([sys.executable, str(ROOT / "sft.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_resume_equals_an_uninterrupted_run(toy_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--toy", "--model", toy_dir, "--rank", "2", "--batch-size", "8", "--eval-limit", "4",
              "--max-new-tokens", "8", "--save-every", "2", "--steps", "4", "--device", "cpu"]
    run_sft(*common, "--out", str(a))
    b.mkdir()  # an interrupted run: its step-2 checkpoint, and metrics written past it
    shutil.copytree(a / "step_000002", b / "step_000002")
    shutil.copy(a / "args.json", b / "args.json")
    shutil.copy(a / "metrics.jsonl", b / "metrics.jsonl")
    run_sft(*common, "--out", str(b), "--resume")
    from safetensors.torch import load_file
    wa, wb = (load_file(d / "step_000004/adapter_model.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "resumed run differs"
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k), "the adapter never trained"
    rows = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl")]
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")}  # timings differ
    assert [drop(r) for r in rows(a)] == [drop(r) for r in rows(b)]


def test_excluded_targets_leave_the_loss():
    """A toy pretraining row keeps its mode-choice character out of the loss: the mask drops exactly
    that position, so a wrong target there changes nothing, and n_tokens counts the rest."""
    tok = M.toy_tokenizer()
    p = toy_problems("train", n=1)[0]
    import toy_task
    row = toy_task.encode_doc(tok.encode, tok.eos_id, toy_task.prompt_text(p["question"]),
                              toy_task.target_text(p["answer"]), ((1, 2),))
    inputs, targets, mask = sft.collate([row], tok.pad_id, "cpu")
    P = len(row[0])
    assert mask[0].sum() == sum(row[2]) == len(row[1]) - 1 and not mask[0, P]  # P: the mode character
    torch.manual_seed(0)
    model = M.Qwen2(TINY)
    changed = targets.clone()
    changed[0, P] = (changed[0, P] + 7) % 256
    assert sft.sft_loss(model, inputs, changed, mask).item() == sft.sft_loss(model, inputs, targets, mask).item()


def test_toy_smoke(tmp_path):
    out = tmp_path / "toy_base"
    stdout = run_sft("--toy", "--steps", "3", "--batch-size", "8", "--eval-limit", "8", "--max-new-tokens", "8",
                     "--out", str(out), "--device", "cpu")
    assert "from toy preset (from scratch: warmup, then cosine)" in stdout and "skill dial 0.1" in stdout
    model = M.load_model(str(out), verbose=False)
    assert model.config == M.TOY_CONFIG
    assert M.load_tokenizer(str(out)).eos_id == M.toy_tokenizer().eos_id
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 3]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert json.load(open(out / "args.json"))["steps"] == 3
    assert (out / "step_000003" / "model.safetensors").exists()
