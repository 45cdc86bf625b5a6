"""Hugging Face model folders: config.json, safetensors weights (one file or shards with an index), hub ids.

Why: a reference is only useful if its checkpoints go both ways: `load_model` reads what transformers (and vLLM)
write, `save_model` writes what they load unchanged, and a hub id works wherever a folder does. The network itself
lives in adamame/model.py; this module is the only one that touches the files.

    read_config(path)            config.json -> ModelConfig, one clear error for a missing or malformed file
    load_model(path, dtype, ...) the network with its weights: every expected tensor present with its shape, none
                                 unknown, a truncated file named (file and tensor)
    save_model(model, path, ...) config.json and safetensors weights (split above 5 GiB with an index), written under
                                 temporary names and renamed, with the user's umask
    resolve(name)                a folder for `--model` / `--tokenizer`: the path itself, else the hub id's snapshot in
                                 the hub cache (HF_HOME / HF_HUB_CACHE), downloaded first when missing and
                                 HF_HUB_OFFLINE is not set; only what the model needs (config, tokenizer, safetensors
                                 weights and their index). Under torchrun the first local rank of every node resolves
                                 it (nodes need not share a cache) while the node's other ranks wait, then read it.

Imports: torch, safetensors, huggingface_hub (installed with transformers: its cache folder, and the download of a
hub id); adamame: model.
"""

import json
import os
import re

import huggingface_hub.constants as hub_constants
import torch
import torch.distributed as tdist
from safetensors import safe_open
from safetensors.torch import save_file

from .model import ModelConfig, Transformer

PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "tokenizer.model", "chat_template.jinja", "added_tokens.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")


def _snapshot(repo_id: str, local_only: bool) -> str:
    from huggingface_hub import snapshot_download  # ~0.2 s to import: only when --model is a hub id

    return snapshot_download(repo_id=repo_id, allow_patterns=PATTERNS, local_files_only=local_only)


def _cache_dir() -> str:
    return hub_constants.HF_HUB_CACHE


def resolve(name: str, flag: str = "--model") -> str:
    """A local folder for `name`: the folder itself, or the hub id's snapshot in the cache (see the module
    docstring). FileNotFoundError naming both readings and the cache folder when it is neither."""
    if os.path.isdir(name):
        return name
    if not _REPO_ID.fullmatch(name) or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{flag} {name}: no such folder (and not a hub id)")
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    path, error = None, None
    if first:
        try:
            path = _snapshot(name, local_only=False)
        except Exception as e:  # noqa: BLE001  (offline, unknown id, no network, gated: one message for all)
            error = e
    if tdist.is_initialized():
        tdist.barrier()  # every node's first rank has downloaded (or failed) before the others read the cache
    if not first:
        try:
            path = _snapshot(name, local_only=True)
        except Exception as e:  # noqa: BLE001
            error = e
    if path is None:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        reason = " ".join(str(error).split()) or type(error).__name__  # the whole message, on one line
        raise FileNotFoundError(f"{flag} {name}: not a folder, and as a hub id neither in the cache {_cache_dir()} "
                                f"nor reachable{offline}: {reason}")
    return path


# Checkpoints: config.json + model.safetensors, or model-0000k-of-0000n.safetensors with an index.

def read_config(path: str) -> ModelConfig:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{cfg_file}: not found (a model folder needs config.json and safetensors weights)")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{cfg_file}: unreadable ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object")
    return ModelConfig.from_dict(d, source=cfg_file)


def _open_safetensors(fn: str):
    """safe_open with one clear error naming the file when it is truncated or not a safetensors file."""
    try:
        return safe_open(fn, framework="pt")
    except Exception as e:  # SafetensorError, OSError
        raise ValueError(f"{fn}: unreadable safetensors file ({str(e).strip().splitlines()[0][:160]})") from None


def _weight_files(path: str) -> dict:
    """{tensor name: file} for a single or sharded safetensors checkpoint."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
        except (ValueError, AttributeError, RecursionError) as e:
            raise ValueError(f"{index}: unreadable index ({type(e).__name__})") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: missing field 'weight_map'")
        files = {name: os.path.join(path, fn) for name, fn in weight_map.items()}
        for fn in set(files.values()):
            if not os.path.isfile(fn):
                raise FileNotFoundError(f"{fn}: listed in {index} but not found")
        return files
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (no weights found)")


def load_model(path: str, dtype=torch.float32, device="cpu", meta: bool = False) -> Transformer:
    """Build the model described by `path/config.json` and load its safetensors weights.

    Every expected tensor must be present with the expected shape and no unknown tensor may be present; any
    mismatch raises one error naming the file and the tensor, before any weight is copied. With `meta=True`
    the model is returned on the meta device with its weights unloaded (materialise it with `to_empty`,
    then call `load_weights`).
    """
    cfg = read_config(path)
    with torch.device("meta"):
        model = Transformer(cfg)
    if meta:
        return model
    model.to_empty(device=device)
    model.to(dtype)
    load_weights(model, path)
    return model


def load_weights(model: Transformer, path: str) -> None:
    """Copy the checkpoint at `path` into `model` after checking every name and shape."""
    files = _weight_files(path)
    params = dict(model.named_parameters(remove_duplicate=True))  # tied lm_head.weight appears once
    expected = {n: tuple(p.shape) for n, p in params.items()}
    tied = model.config.tie_word_embeddings
    problems = []
    shapes = {}
    for name, fn in files.items():
        if name == "lm_head.weight" and tied:
            continue  # some tied checkpoints store the (identical) copy anyway
        if name not in expected:
            problems.append(f"{fn}: unexpected tensor '{name}'")
            continue
        with _open_safetensors(fn) as f:
            if name not in f.keys():
                problems.append(f"{fn}: tensor '{name}' listed in the index is missing from the file")
                continue
            shapes[name] = tuple(f.get_slice(name).get_shape())
        if shapes[name] != expected[name]:
            problems.append(f"{fn}: tensor '{name}' has shape {list(shapes[name])}, expected {list(expected[name])}")
    for name in expected:
        if name not in files:
            problems.append(f"{path}: missing tensor '{name}'")
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more + "\n" + "\n".join(problems[1:6]))

    by_file = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    with torch.no_grad():
        for fn, names in by_file.items():
            with _open_safetensors(fn) as f:
                for name in names:
                    try:
                        params[name].copy_(f.get_tensor(name))
                    except Exception as e:  # data cut short after a valid header
                        raise ValueError(f"{fn}: tensor '{name}' could not be read ({type(e).__name__}: "
                                         f"{str(e).strip()[:120]})") from None


def save_model(model: Transformer, path: str, state_dict: dict | None = None, dtype=None,
               max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `config.json` and safetensors weights that transformers (and vLLM) load unchanged.

    `state_dict` defaults to the model's own (pass a gathered full state dict for an FSDP2 model). Above
    `max_shard_bytes` the weights are split into numbered shards with `model.safetensors.index.json`.
    Files are written under temporary names and renamed, so an interrupted save leaves no half file.
    """
    cfg = model.config
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {n: t for n, t in sd.items() if not (cfg.tie_word_embeddings and n == "lm_head.weight")}
    sd = {n: (t.to(dtype) if dtype is not None else t).detach().contiguous().cpu() for n, t in sd.items()}
    os.makedirs(path, exist_ok=True)
    raw = dict(cfg.raw)
    some = next(iter(sd.values()))
    raw["torch_dtype"] = str(some.dtype).removeprefix("torch.")
    raw["dtype"] = raw["torch_dtype"]

    shards, cur, cur_bytes = [], {}, 0
    for n, t in sd.items():
        nb = t.numel() * t.element_size()
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[n] = t
        cur_bytes += nb
    shards.append(cur)

    umask = os.umask(0o022)
    os.umask(umask)

    def write(obj_path, writer):
        tmp = obj_path + ".tmp"
        writer(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors >= 0.8 creates its files 0600; follow the umask as open() does
        os.replace(tmp, obj_path)

    def write_json(obj):
        def writer(p):
            with open(p, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, sort_keys=True)
        return writer

    for stale in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(path, stale)):
            os.remove(os.path.join(path, stale))
    if len(shards) == 1:
        write(os.path.join(path, "model.safetensors"), lambda p: save_file(shards[0], p, metadata={"format": "pt"}))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write(os.path.join(path, fn), lambda p, s=shard: save_file(s, p, metadata={"format": "pt"}))
            weight_map.update({n: fn for n in shard})
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write(os.path.join(path, "model.safetensors.index.json"), write_json(index))
    write(os.path.join(path, "config.json"), write_json(raw))
