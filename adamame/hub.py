"""A model given as a Hugging Face hub id (`deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`) instead of a folder.

Why: TRL, verl and transformers all take hub ids and resolve them through the local cache, and researchers launch
with them. `resolve` returns a local folder: the path itself when it is a folder, else the id's snapshot in the hub
cache (HF_HOME / HF_HUB_CACHE), downloaded first when missing and HF_HUB_OFFLINE is not set; only what the model
needs (config, tokenizer, safetensors weights and their index). Under torchrun the first local rank of every node
resolves it (nodes need not share a cache) while the node's other ranks wait, then read the cache.

Imports: huggingface_hub (installed with transformers), torch.distributed.
"""

import os
import re

PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "tokenizer.model", "chat_template.jinja", "added_tokens.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")


def _snapshot(repo_id: str, local_only: bool) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=repo_id, allow_patterns=PATTERNS, local_files_only=local_only)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve(name: str, flag: str = "--model") -> str:
    """A local folder for `name`: the folder itself, or the hub id's snapshot in the cache (see the module
    docstring). FileNotFoundError naming both readings and the cache folder when it is neither."""
    if os.path.isdir(name):
        return name
    import torch.distributed as tdist

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
