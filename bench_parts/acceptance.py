"""
The one-shot GPU acceptance run: everything a first GPU session must show, in one command and at
most ~8 minutes on one H100 or H200, written to one JSON with each figure beside its goal.

    python bench.py --acceptance --tokenizer TOKENIZER_JSON --data GSM8K_FOLDER   # one H100/H200
    python bench.py --acceptance --toy             # its dry path at toy shapes, seconds on a CPU
"""
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from bench_parts.measure import peer_model, random_model
from errors import user_exit
from flops import get_config
from model import TOY_CONFIG, pick_device, save_model, toy_tokenizer
from sampler import generate

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
# what the GPU run must show, beside every figure it writes
GOALS = dict(sampling_vs_peer=">= 5", sampling_of_bandwidth_floor=">= 0.5", lora_step_vs_peer="> 1",
             lora_memory_vs_peer="<= 1", full_step_vs_peer="> 1", full_memory_vs_peer="<= 1")




def goal(value, target, ok):
    return dict(value=value, goal=target, ok=bool(ok))


def check_logits(res, model, ids, dtype):
    """1. Our logits against transformers' Qwen2 with the same random weights."""
    if not importlib.util.find_spec("transformers"):
        print("  transformers is not installed: no logits check, no peer")
        return
    hf = peer_model(model, dtype)
    with torch.inference_mode():
        ours, theirs = model(ids).float(), hf(input_ids=ids).logits.float()
    del hf
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    res["logits_vs_transformers"] = dict(
        max_rel_err=rel, exact_fraction=(ours == theirs).float().mean().item(),
        argmax_agree=(ours.argmax(-1) == theirs.argmax(-1)).float().mean().item())
    res["goals"]["logits_max_rel_err"] = goal(rel, f"<= {tol}", rel <= tol)
    print(f"  logits vs transformers ({dtype}): max rel. error {rel:.2e}")


def check_compiled_greedy(res, model, cfg, g, dry):
    """2. generate(compile=True) greedy equals eager greedy, ragged prompts. On a CPU inductor
    takes a minute: there the static-shape step runs eagerly (torch.compile made the identity)."""
    if dry:
        real_compile = torch.compile
        torch.compile = lambda fn, **kw: fn
    with torch.no_grad():  # made lively: random weights at init mostly repeat the last token
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    lengths = (3, 9, 1, 4) if dry else (17, 150, 64, 3, 99, 120, 8, 40)
    prompts = [torch.randint(0, cfg.eos_token_id, (n,), generator=g).tolist() for n in lengths]
    n_new = 12 if dry else 64
    eager = generate(model, prompts, n_new, temperature=0, n=2)
    t0 = time.time()
    compiled = generate(model, prompts, n_new, temperature=0, n=2, compile=True)
    compile_s = time.time() - t0
    if dry:
        torch.compile = real_compile
    torch.compiler.reset()
    same = sum(a == b for a, b in zip(eager, compiled))
    first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
             for a, b in zip(eager, compiled)]
    res["compiled_greedy"] = dict(rows=len(eager), rows_equal=same, first_difference=first,
                                  distinct_tokens=len({t for c in eager for t in c}),
                                  first_call_s=compile_s)
    res["goals"]["compiled_greedy_equals_eager"] = goal(same / len(eager), "== 1",
                                                        same == len(eager))
    print(f"  compiled greedy == eager greedy: {same}/{len(eager)} completions ({n_new} tokens, "
          f"first call {compile_s:.1f} s)")


def check_bench(res, work, device, dry):
    """3. The bench at 3B shapes, in its own process (its memory, its compiled graphs)."""
    bench_json = os.path.join(work, "bench.json")
    if dry:
        shape = ["--toy", "--batch", "2", "--group", "2", "--prompt-len", "8",
                 "--max-new-tokens", "8", "--reps", "1", "--warmup", "1"]
    else:
        shape = ["--shape", "Qwen2.5-3B", "--batch", "64", "--group", "8", "--prompt-len", "150",
                 "--max-new-tokens", "512", "--compile", "--reps", "2", "--peer-reps", "1",
                 "--warmup", "1"]
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), *shape, "--no-full", "--device",
           device.type, "--out", bench_json]
    if importlib.util.find_spec("transformers"):
        cmd.append("--peer")
    print("  $ " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    with open(bench_json) as f:
        res["bench"] = json.load(f)
    for k, v in res["bench"]["ratios"].items():
        op, target = GOALS[k].split()
        compare = {">=": v >= float(target), ">": v > float(target), "<=": v <= float(target)}
        res["goals"][k] = goal(v, GOALS[k], compare[op])


def check_grpo(res, work, args, cfg, device, dtype, dry):
    """4. Three GRPO steps of grpo.py's defaults (32 prompts x 8 samples x 512 tokens),
    --compile, on random weights saved to a folder beside the real tokenizer."""
    folder = os.path.join(work, "model")
    torch.manual_seed(args.seed)
    save_model(random_model(cfg, "cpu" if dry else device, dtype, args.seed), folder)
    if dry:
        toy_tokenizer().tok.save(os.path.join(folder, "tokenizer.json"))
        task = ["--task", "toy", "--batch", "2", "--group", "2", "--max-new-tokens", "8",
                "--micro-batch", "0", "--eval-limit", "4", "--eval-batch-size", "4"]
    else:
        shutil.copy(args.tokenizer, os.path.join(folder, "tokenizer.json"))
        task = ["--data", args.data, "--compile", "--eval-limit", "8", "--eval-batch-size", "8"]
    run_dir = os.path.join(work, "grpo")
    cmd = [sys.executable, os.path.join(HERE, "grpo.py"), "--model", folder, "--rank", "1",
           "--steps", "3", "--eval-every", "0", "--device", device.type, "--out", run_dir, *task]
    print("  $ " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "t_train" in r]
    step_s = [r["t_sample"] + r["t_train"] for r in steps]
    res["grpo"] = dict(steps=steps, step_s=step_s)
    steady = min(step_s[1:]) if len(step_s) > 1 else step_s[0]  # step 1 compiles
    res["goals"]["grpo_step_s"] = goal(steady, "<= 6 (steps 2-3: step 1 compiles)", steady <= 6)
    print(f"  GRPO steps: {', '.join(f'{s:.1f} s' for s in step_s)}")


def acceptance(args):
    """Everything a first GPU session must show, written to one JSON with each figure beside its
    goal: 1. bf16 logits of model.py against transformers' Qwen2 on the GPU (same random 3B
    weights); 2. generate(compile=True) greedy equals eager greedy; 3. the bench at Qwen2.5-3B
    shapes, 64 prompts x 8 samples x 512 tokens, compiled, with the peer; 4. 3 GRPO steps of
    grpo.py's defaults with --compile on random 3B weights (the device has no internet and no
    Qwen weights; the speed is the shape's, and random weights never stop early, so every
    completion is 512 tokens long). On a CPU (or with --toy) the same code runs at toy shapes in
    seconds: the dry path the tests run (`RANK1_COMPILE_TESTS=1 pytest tests/test_bench.py` runs
    the real compile)."""
    t_start = time.time()
    device = pick_device(args.device)
    dry = device.type == "cpu" or args.toy
    cfg = TOY_CONFIG if dry else get_config("Qwen2.5-3B")
    dtype = torch.float32 if dry else torch.bfloat16
    out_path = args.out or "runs/acceptance.json"
    if not dry:
        if not args.tokenizer or not args.data:
            raise user_exit("--acceptance on a GPU needs --tokenizer (Qwen2.5's tokenizer.json) "
                            "and --data (a folder with GSM8K train.jsonl and test.jsonl): the "
                            "device has no internet")
        data = [os.path.join(args.data, f"{split}.jsonl") for split in ("train", "test")]
        for path in (args.tokenizer, *data):
            if not os.path.exists(path):
                raise user_exit(f"{path}: no such file (the device has no internet)")
    work = tempfile.mkdtemp(prefix="rank1_acceptance_")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU"
    res = dict(device=name, dry=dry, shape="toy" if dry else "Qwen2.5-3B", dtype=str(dtype),
               torch=torch.__version__, goals={})
    print(f"acceptance ({'dry path, toy shapes' if dry else 'Qwen2.5-3B shapes'}) on {name}")
    model = random_model(cfg, device, dtype, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.eos_token_id, (2, 16) if dry else (4, 256), generator=g).to(device)
    check_logits(res, model, ids, dtype)
    check_compiled_greedy(res, model, cfg, g, dry)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    check_bench(res, work, device, dry)
    check_grpo(res, work, args, cfg, device, dtype, dry)
    shutil.rmtree(work)
    res["total_s"] = time.time() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=2)
    what = " (dry path: toy figures, not the goals)" if dry else ""
    print(f"\nacceptance{what}, {res['total_s']:.0f} s:")
    for k, v in res["goals"].items():
        print(f"  {'ok  ' if v['ok'] else 'MISS'} {k:30s} {v['value']:10.4g}   goal {v['goal']}")
    print(f"wrote {out_path}")
    return res
