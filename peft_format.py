"""
PEFT's adapter folder, read and written: adapter_config.json + adapter_model.safetensors (+ any
sidecar file), the checks a folder from elsewhere must pass, atomic writes, and loading tensors
into a model by key with every key and shape checked first. lora.py and tinylora.py build their
tuners' configs and tensors on top (docs/formats.md lists the keys).
"""
import os

import torch
from safetensors.torch import save_file

from errors import describe, UserError, load_safetensors, read_json, write_atomic, write_json

PEFT_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the HF model)
UNSUPPORTED = ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save",
               "lora_bias")


def read_folder(in_dir, peft_type, need):
    """(config, tensors) of a PEFT folder of `peft_type` whose config has the keys `need`; refuses
    what rank1 can't run. A missing, truncated or corrupt file is a UserError that names it."""
    paths = [os.path.join(in_dir, f) for f in ("adapter_config.json", "adapter_model.safetensors")]
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"no {p} (a PEFT adapter folder holds adapter_config.json + "
                            f"adapter_model.safetensors)")
    cfg = read_json(paths[0])
    found = cfg.get("peft_type") if isinstance(cfg, dict) else cfg
    if found != peft_type:
        raise UserError(f"{paths[0]}: peft_type {found!r}, only LORA and TINYLORA are supported")
    unsupported = {k: cfg[k] for k in UNSUPPORTED if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise UserError(f"{paths[0]}: unsupported PEFT options {unsupported}")
    missing = [k for k in (*need, "target_modules") if k not in cfg]
    if missing:
        raise UserError(f"{paths[0]}: no {', '.join(missing)}")
    check_types(cfg, paths[0])
    return cfg, load_safetensors(paths[1])


def check_types(cfg, path):
    """adapter_config.json is user input: "r": "one" is one line naming the key, not a traceback."""
    kinds = dict(r=int, u=int, projection_seed=int, lora_alpha=(int, float),
                 weight_tying=(int, float), use_rslora=bool)
    for key, kind in kinds.items():
        bad_bool = isinstance(cfg.get(key), bool) and kind is not bool
        if key in cfg and (not isinstance(cfg[key], kind) or bad_bool):
            what = getattr(kind, "__name__", "number")
            raise UserError(f'{path}: "{key}": {cfg[key]!r} is not a {what}')
    if cfg.get("r", 1) < 1 or cfg.get("u", 1) < 1 or not 0 <= cfg.get("weight_tying", 0) <= 1:
        raise UserError(f"{path}: needs r >= 1, u >= 1 and weight_tying in [0, 1]")
    layers = cfg.get("layers_to_transform")
    if not (layers is None or isinstance(layers, int) or
            isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        raise UserError(f'{path}: "layers_to_transform": {layers!r} is not null, an int or ints')


def write_adapter(out_dir, tensors, config):
    """adapter_model.safetensors, then adapter_config.json, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "adapter_model.safetensors"),
                 lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    write_json(os.path.join(out_dir, "adapter_config.json"), config)


def copy_tensors(params, tensors, in_dir, optional=(), checked=()):
    """Load the file's tensors into the model's (`params`: {file key: tensor}), after checking
    that every key is there (but `optional`), none is left over (but `checked`) and every shape
    fits: nothing is changed unless everything fits."""
    missing = sorted(params.keys() - tensors.keys() - set(optional))
    unexpected = sorted(tensors.keys() - params.keys() - set(checked))
    if missing or unexpected:
        raise UserError(f"{in_dir}: missing tensors {missing[:3]} ({len(missing)}), unexpected "
                        f"{unexpected[:3]} ({len(unexpected)})")
    params = {k: p for k, p in params.items() if k in tensors}
    for key, p in params.items():
        if tensors[key].shape != p.shape:
            raise UserError(f"{key}: shape {tuple(tensors[key].shape)} in {in_dir} does not fit "
                            f"the model's {tuple(p.shape)}")
        if not torch.isfinite(tensors[key]).all():  # a diverged run's weights: no answer to read
            raise UserError(f"{in_dir}: {key} holds NaN or infinite values")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key])


if __name__ == "__main__":
    describe(__doc__)
