"""Plain FSDP2 plumbing shared by the trainers: process group, sharding, gathering, micro-batches, the rollout copy.

Why: both trainers shard the model the same way: `fully_shard` on every decoder layer, then on the root (embedding,
final norm, lm_head), so only one layer's full parameters exist at a time. On GPU the forward runs in bf16 with
float32 master weights and float32 gradient reduction; on CPU (gloo) everything stays float32. The same code runs
as a single process (no torchrun): the "world" is then one rank and FSDP2 still wraps the model, so there is one
code path to read and test.

Imports: torch; adamame: lora, model.
"""

import ctypes
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from .lora import LoRALinear
from .model import Transformer, merged_param, stored_dtype

TIMEOUT_S = float(os.environ.get("ADAMAME_DIST_TIMEOUT", 1800))  # a collective waiting longer means a rank is gone


def setup() -> tuple:
    """(rank, world_size, device). Initialises the process group from torchrun's variables, or a 1-rank group.

    Under torchrun each rank dies with its launcher (a `kill -9` of torchrun must not leave ranks training and
    writing into --out), and every collective gives up after ADAMAME_DIST_TIMEOUT seconds (default 1800) instead
    of hanging when a rank has died. On CUDA the allocator gets expandable segments unless PYTORCH_ALLOC_CONF (or the
    older PYTORCH_CUDA_ALLOC_CONF) is set.
    """
    allocator_defaults()
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        init = "env://"
        if "RANK" not in os.environ:  # plain `python train_x.py`: a one-process group on a file store (no port race)
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            init = "file://" + os.path.join(tempfile.mkdtemp(prefix="adamame-"), "store")
        else:
            die_with_parent()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group(backend, init_method=init, rank=int(os.environ["RANK"]),
                                 world_size=int(os.environ["WORLD_SIZE"]), timeout=timedelta(seconds=TIMEOUT_S))
    rank, world = tdist.get_rank(), tdist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def allocator_defaults():
    """Expandable segments for the CUDA allocator unless PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF is set: segments
    that grow in place keep the fragmentation between the rollout's KV cache and the update's activations small (the
    memory plan allows 3%). Read at the first CUDA allocation, so call it before any (torch >= 2.9 reads this name)."""
    if not (os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"


def die_with_parent():
    """Ask the kernel to kill this process when its parent (the torchrun launcher) dies (Linux PR_SET_PDEATHSIG);
    elsewhere a daemon thread polls the parent. Exits now if the parent is already gone."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent or parent == 1:
        sys.exit("error: the launcher of this rank is gone")


class RankLost(RuntimeError):
    """A collective failed or timed out: another rank died (or hangs). The message names this rank and the step."""


@contextmanager
def stop_if_a_rank_is_lost(rank: int, step: int):
    """Turn a failed collective inside one training step into RankLost naming the rank and the step."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e)
        if not (isinstance(e, tdist.DistError) or any(k in msg for k in ("Connection closed", "Timed out", "timed out",
                                                                           "NCCL", "gloo", "Connection reset"))):
            raise
        first = msg.strip().splitlines()[0][:200] if msg.strip() else type(e).__name__
        raise RankLost(f"rank {rank}, step {step}: a collective failed ({first}); another rank probably died or "
                       f"hangs (timeout {TIMEOUT_S:.0f} s, ADAMAME_DIST_TIMEOUT)") from None


def cleanup(barrier: bool = True):
    """Destroy the process group (after a barrier: every rank is done). barrier=False on an error path, where the
    other ranks may never reach one: the group's threads must still not outlive the interpreter (an abort at exit)."""
    if tdist.is_initialized():
        if barrier:
            tdist.barrier()
        tdist.destroy_process_group()


def shard_model(model, device, activation_checkpointing=False):
    """fully_shard each decoder layer, then the root; bf16 compute / fp32 reduce on CUDA, fp32 on CPU.

    Parameters that do not train (a LoRA run's base, a full fine-tuning run's reference) need no float32 master:
    when the checkpoint stores them in the compute dtype (the paper's models: bf16), they are held in it, which is
    lossless and halves them; the trainable ones stay float32."""
    dtype = compute_dtype(device)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if stored_dtype(model.config) == dtype:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    model.to(device)
    for layer in model.model.layers:
        if activation_checkpointing:
            _checkpoint_forward(layer)
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _checkpoint_forward(layer):
    inner = layer.forward

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    layer.forward = forward


def full_state_dict(model, trainable_only=False) -> dict:
    """The unsharded state dict on CPU, on rank 0 (other ranks get {}); every rank must call it. trainable_only
    all-gathers only the parameters that train (a LoRA run's checkpoint then moves megabytes, not the model)."""
    if not trainable_only:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    sd = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if hasattr(p, "full_tensor") else p  # a DTensor shard, or a plain parameter
                if rank0:
                    sd[name] = full.detach().cpu()
    return sd


def load_full_state_dict(model, sd, strict=True):
    """Load a full state dict held by rank 0 into the sharded model (broadcast to the other ranks)."""
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                             strict=strict))


def optimizer_state(model, optimizer) -> dict:
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, sd):
    set_optimizer_state_dict(model, optimizer, sd,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def compute_dtype(device) -> torch.dtype:
    """The dtype forwards run in: bf16 on CUDA (FSDP casts the float32 masters), float32 on CPU. ADAMAME_COMPUTE_DTYPE
    (bfloat16 or float32) overrides it: bfloat16 on a CPU runs the GPU's mixed precision where a test can watch it."""
    name = os.environ.get("ADAMAME_COMPUTE_DTYPE")
    if name is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"ADAMAME_COMPUTE_DTYPE={name!r}: use {' or '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


@torch.no_grad()
def rollout_copy(model, dtype=None):
    """A plain copy of the policy for generation: no FSDP hooks, no adapters, in the compute dtype.

    Every parameter is gathered once (DTensor.full_tensor, in the same order on every rank) and LoRA is merged in
    float32 (W + alpha / r * B A) before the cast, so the decode loop runs the bare network. The copy is built once
    per RL step and dropped after the rollouts; its bytes are exactly the weights row of the memory plan. It holds
    q/k/v and gate/up as one weight each (Transformer.merge_projections: 4 GEMMs a decode layer, not 7), each filled
    in place from its parts, so no second copy of a weight is ever made.
    """
    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    src = dict(model.named_parameters())
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    device = next(iter(src.values())).device
    dtype = dtype or compute_dtype(device)
    with torch.device("meta"):
        copy = Transformer(model.config).to(dtype).merge_projections()
    copy.to_empty(device=device)
    filled = 0
    for name, p in src.items():
        if name.endswith((".lora_A", ".lora_B")):
            continue
        w = full(p)
        prefix = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and prefix in lora:
            a, b = full(src[prefix + ".lora_A"]), full(src[prefix + ".lora_B"])
            w = w.float() + lora[prefix].scale * (b.float() @ a.float())
        dst = merged_param(copy, name)
        dst.copy_(w)
        filled += dst.numel()
    assert filled == sum(p.numel() for p in copy.parameters()), "rollout_copy: a parameter of the copy was not filled"
    copy.requires_grad_(False)
    return copy.eval()


def free_cached_memory(device):
    """Give the allocator's cached blocks back between phases, so the next phase (the update after the rollout)
    can use them."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def all_max(x: float, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t.item()


def all_sum(x: float, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.item()


def micro_batches(items, budget, length, device):
    """`items` sorted by length and cut into runs of at most `budget` padded tokens (count x longest), so a
    micro-batch pads little. Every rank must run the same number of forwards (each one all-gathers parameters):
    a rank that needs fewer splits its largest micro-batches until it has as many as the rank that needs most."""
    bins, cur = [], []
    for it in sorted(items, key=length):
        if cur and length(it) * (len(cur) + 1) > budget:  # sorted: the new item is the longest
            bins.append(cur)
            cur = []
        cur.append(it)
    bins += [cur] if cur else []

    n = int(all_max(len(bins), device))
    while len(bins) < n:
        splittable = [j for j in range(len(bins)) if len(bins[j]) > 1]
        if not splittable:
            raise RuntimeError("micro_batches: ranks hold different numbers of sequences")
        i = max(splittable, key=lambda j: len(bins[j]) * length(bins[j][-1]))
        half = len(bins[i]) // 2
        bins[i:i + 1] = [bins[i][:half], bins[i][half:]]
    return bins
