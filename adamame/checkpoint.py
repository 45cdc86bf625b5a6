"""Training state on disk: written atomically, read back with clear errors, RNG streams included.

Why: a crash (or a kill) while writing must never leave a corrupt checkpoint, and `--resume` must continue
exactly where the run stopped: same weights, optimizer moments, step, data position and random streams.
Each checkpoint is one file written under a temporary name, flushed to disk, then renamed over the old one
(rename is atomic on POSIX), so at any instant the file on disk is either the previous checkpoint or the
new one.

Imports: torch, numpy.
"""

import os
import random

import numpy as np
import torch


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (e.g. a non-finite loss); the last good checkpoint is kept."""


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
