"""Checkpoint gathers under FSDP2: full_state_dict(trainable_only=True) against gathering the whole model and keeping
the trainable part (what it did before). Run under torchrun; rank 0 prints JSON: the elements each way all-gathers
(counted from the collectives a TorchDispatchMode sees), the trainable parameters' element count, and whether the
two dicts are equal. Usage: gather_trainable.py MODEL_DIR
"""

import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from adamame import dist  # noqa: E402
from adamame.lora import apply_lora  # noqa: E402
from adamame.hf import load_model  # noqa: E402


class GatheredElements(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "all_gather" in str(func):
            self.elements += out.numel()
        return out


def main(model_dir):
    rank, world, device = dist.setup()
    model = load_model(model_dir)
    apply_lora(model, rank=4, alpha=8)
    dist.shard_model(model, device)
    with GatheredElements() as new:
        a = dist.full_state_dict(model, trainable_only=True)
    with GatheredElements() as old:
        full = dist.full_state_dict(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    b = {k: v for k, v in full.items() if k in names}
    if rank == 0:
        print(json.dumps({"new": new.elements, "old": old.elements, "world": world,
                          "trainable": sum(v.numel() for v in b.values()), "total": sum(v.numel() for v in full.values()),
                          "equal": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)}))
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
