"""
Where a model's files come from: a local folder, or a Hugging Face hub id downloaded once
(huggingface_hub.snapshot_download, which the tokenizers package brings); and every tensor of its
safetensors files, one file or the shards an index names. model.load_model builds the model.

    python model.py --model Qwen/Qwen2.5-3B      # downloads config.json, *.safetensors, tokenizer
"""
import os

from errors import describe, UserError, load_safetensors, read_json


def resolve_path(name_or_path, patterns=("*.json", "*.safetensors")):
    """A local folder as is; otherwise a hub id such as Qwen/Qwen2.5-3B, downloaded once."""
    if os.path.isdir(name_or_path):
        return name_or_path
    not_an_id = name_or_path.count("/") != 1 or name_or_path.startswith((".", "/"))
    if os.path.exists(name_or_path) or not_an_id:
        raise UserError(f"no model folder at {name_or_path!r} (expected a folder with "
                        f"config.json and model.safetensors, or a hub id like Qwen/Qwen2.5-3B)")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name_or_path, allow_patterns=list(patterns))
    except Exception as e:
        raise UserError(f"could not download {name_or_path!r} from the Hugging Face hub "
                        f"({type(e).__name__}: {e}). Offline? Point --model at a local folder "
                        f"with config.json, model.safetensors (or shards + index) and "
                        f"tokenizer.json.") from e


def read_safetensors(path):
    """All tensors of a folder: model.safetensors, or the shards its index names."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no \"weight_map\" object naming the shards")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise UserError(f"no model.safetensors or model.safetensors.index.json in {path}")
    state = {}
    for name in files:
        state.update(load_safetensors(os.path.join(path, name)))
    return state


if __name__ == "__main__":
    describe(__doc__)
