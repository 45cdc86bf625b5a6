"""Training state on disk: written atomically, read back with clear errors, RNG streams included.

Why: a crash (or a kill) while writing must never leave a corrupt checkpoint, and `--resume` must continue
exactly where the run stopped: same weights, optimizer moments, step, data position and random streams.
Each checkpoint is one file written under a temporary name, flushed to disk, then renamed over the old one
(rename is atomic on POSIX), so at any instant the file on disk is either the previous checkpoint or the
new one.

Imports: torch, numpy; adamame: dist, hf, lora, model.
"""

import fcntl
import json
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as tdist

from . import dist
from .lora import lora_scales, merged_state_dict
from .hf import save_model
from .model import stored_dtype


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (e.g. a non-finite loss); the last good checkpoint is kept."""


class OutputInUse(ValueError):
    """The output folder cannot be this run's: another live run holds it, or it is not a folder."""


_LOCKS = {}  # path -> open lock file: held for the life of the process, released by the kernel when it dies


RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "final")  # what a started or finished training run leaves


def lock_output(out_dir: str, earlier=RUN_FILES, keep=False, check=None) -> None:
    """One run per output folder, and none over an earlier one. An exclusive fcntl lock on out_dir/.lock, held until
    the process exits (a killed run releases it at once, a live one, even an orphaned rank, keeps it); then, unless
    `keep` (--resume or --overwrite), any of `earlier` already in out_dir stops the run before it writes anything,
    naming what is there and the ways on; then `check()` (a message, or None), if given. Every rank calls this; rank 0
    looks and all ranks raise OutputInUse, so that under torchrun no rank waits for one that stopped."""
    def look():
        err = _take_lock(out_dir)
        found = [] if keep or err else [f for f in earlier if os.path.exists(os.path.join(out_dir, f))]
        return err or (found and f"{out_dir} holds an earlier run ({', '.join(found)}): give another --out, or "
                                 f"--overwrite to replace it (an interrupted run continues with --resume)") or (
            check() if check else None)

    if not tdist.is_initialized():  # evaluate.py --score: a single process
        err = look()
    else:
        box = [look() if tdist.get_rank() == 0 else None]
        tdist.broadcast_object_list(box, src=0)
        err = box[0]
    if err:
        raise OutputInUse(err)


def _take_lock(out_dir: str):
    path = os.path.abspath(out_dir)
    if path in _LOCKS:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--out {out_dir} is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"--out {out_dir}: cannot create the folder ({e.strerror})"
    f = open(os.path.join(path, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        return f"{out_dir} is in use by another run (pid {pid})"
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS[path] = f
    return None


def atomic_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (run without --resume to start fresh)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------- trainer state
# Every rank calls these (they gather or broadcast over the process group); only rank 0 touches the files.

def save_training_state(path, model, optimizer, args, step):
    """Trainable weights, optimizer state (both gathered in full), the step, the flags and every rank's RNG."""
    trainable = dist.full_state_dict(model, trainable_only=True)
    optim = dist.optimizer_state(model, optimizer)
    rngs = [None] * tdist.get_world_size()
    tdist.all_gather_object(rngs, rng_state())
    if tdist.get_rank() == 0:
        atomic_save({"step": step, "args": vars(args), "model": trainable, "optimizer": optim, "rng": rngs}, path)


def resume_training_state(path, model, optimizer, args, must_match, logs=()) -> int:
    """Restore what save_training_state wrote and return its step. Flags in `must_match` must not have changed
    (they decide the data order or the schedule); rows of the JSONL `logs` past the step are dropped, since the
    resumed run writes them again."""
    rank = tdist.get_rank()
    state = load(path) if rank == 0 else None
    obj = [state and {k: state[k] for k in ("step", "args", "rng")}]
    tdist.broadcast_object_list(obj, src=0)
    meta = obj[0]
    for key in must_match:
        if meta["args"].get(key) != getattr(args, key):
            raise ValueError(f"{path}: saved with --{key.replace('_', '-')} {meta['args'].get(key)}, "
                             f"now {getattr(args, key)}")
    dist.load_full_state_dict(model, state["model"] if rank == 0 else {}, strict=False)
    dist.load_optimizer_state(model, optimizer, state["optimizer"] if rank == 0 else {})
    set_rng_state(meta["rng"][rank])
    for log in logs:
        if rank == 0 and os.path.exists(log):
            with open(log, encoding="utf-8", errors="replace") as f:
                rows = [r for r in f if (step := _step_of(r)) is not None and step <= meta["step"]]
            with open(log, "w", encoding="utf-8") as f:
                f.writelines(rows)
    return meta["step"]


def _step_of(line: str):
    """The step of a JSONL log row, or None for a line a kill cut short."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def start_fresh(logs=()):
    """A run that does not resume starts without them: its JSONL logs, and with --overwrite the earlier run's
    checkpoint and export (so that a new run killed before its first save leaves nothing of the old one to resume)."""
    if tdist.get_rank() == 0:
        for log in logs:
            if os.path.isdir(log):
                shutil.rmtree(log)
            elif os.path.exists(log):
                os.remove(log)
    tdist.barrier()


def export_hf(model, tokenizer, out_dir, lora_scale=None):
    """The final Hugging Face folder: LoRA merged with alpha / rank (or `lora_scale` for every adapter), weights in
    the base checkpoint's dtype, plus the tokenizer. Returns when the folder exists for every rank."""
    full = dist.full_state_dict(model)
    if tdist.get_rank() == 0:
        scales = lora_scales(model)
        if lora_scale is not None:
            scales = {name: float(lora_scale) for name in scales}
        sd = merged_state_dict(full, scales) if scales else full
        save_model(model, out_dir, state_dict=sd, dtype=stored_dtype(model.config))
        tokenizer.save_pretrained(out_dir)
    tdist.barrier()
