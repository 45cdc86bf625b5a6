"""Plain FSDP2 plumbing shared by the trainers: process group, sharding, gathering, unsharding for rollouts.

Why: both trainers shard the model the same way: `fully_shard` on every decoder layer, then on the root (embedding,
final norm, lm_head), so only one layer's full parameters exist at a time. On GPU the forward runs in bf16 with
float32 master weights and float32 gradient reduction; on CPU (gloo) everything stays float32. The same code runs
as a single process (no torchrun): the "world" is then one rank and FSDP2 still wraps the model, so there is one
code path to read and test.

Imports: torch.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def setup() -> tuple:
    """(rank, world_size, device). Initialises the process group from torchrun's variables, or a 1-rank group."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" not in os.environ:  # plain `python train_x.py`: a one-process group on a free local port
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def cleanup():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_model(model, device, activation_checkpointing=False):
    """fully_shard each decoder layer, then the root; bf16 compute / fp32 reduce on CUDA, fp32 on CPU."""
    if device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    model.to(device)
    for layer in model.model.layers:
        if activation_checkpointing:
            _checkpoint_forward(layer)
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _checkpoint_forward(layer):
    from torch.utils.checkpoint import checkpoint

    inner = layer.forward

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    layer.forward = forward


def full_state_dict(model, trainable_only=False) -> dict:
    """The unsharded state dict on CPU, on rank 0 (other ranks get {}); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainable_only:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in names}
    return sd


def load_full_state_dict(model, sd, strict=True):
    """Load a full state dict held by rank 0 into the sharded model (broadcast to the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                             strict=strict))


def optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, sd):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, sd,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


@contextmanager
def unsharded(model):
    """All parameters gathered once for the block (a rollout): no all-gather per decoded token."""
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in mods:  # fully_shard's defaults: layers reshard after forward, the root does not
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


def all_max(x: float, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_sum(x: float, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()
