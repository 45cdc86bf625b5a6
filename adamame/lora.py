"""LoRA, written out: a frozen linear layer plus a trainable low-rank update, merged back at export.

    y = W x + b + (alpha / r) * B A dropout(x),      A: [r, in] (Kaiming-uniform), B: [out, r] (zeros)

so training starts exactly at the base model. `LoRALinear` subclasses nn.Linear and keeps its `weight` and
`bias` parameters, so names stay Hugging Face names and FSDP2 shards the layer like any other. Disabling the
adapters (`adapters_disabled`) gives the base model back without a second copy of the weights: GRPO uses that
for the reference policy. `merged_state_dict` folds W + (alpha / r) B A into plain weights for export (the
released AdaMame merge used scale 1.0 instead of alpha / r; this one uses the training scale).

Imports: torch.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects: no copy
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dt))
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha, self.scale, self.dropout = rank, alpha, alpha / rank, dropout
        self.enabled = True

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return y + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scale


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets=ALL_LINEAR) -> nn.Module:
    """Replace every nn.Linear whose name ends in one of `targets` by a LoRALinear; freeze everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and child_name in targets:
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                replaced += 1
    if replaced == 0:
        raise ValueError(f"LoRA: no linear layer named {', '.join(targets)} found")
    return model


def lora_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model (adapters off) inside the block: the GRPO reference policy, with no weight copy."""
    mods = lora_modules(model)
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


def merged_state_dict(state_dict: dict, scales: dict) -> dict:
    """Fold `X.lora_A` / `X.lora_B` into `X.weight` with the given scale per layer prefix; drop the adapter keys.

    `state_dict` is a full (gathered) state dict; `scales` maps "model.layers.0.self_attn.q_proj" -> alpha / r.
    """
    out = {k: v for k, v in state_dict.items() if not (k.endswith(".lora_A") or k.endswith(".lora_B"))}
    for prefix, scale in scales.items():
        a, b = state_dict[prefix + ".lora_A"], state_dict[prefix + ".lora_B"]
        w = out[prefix + ".weight"]
        out[prefix + ".weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out


def lora_scales(model: nn.Module) -> dict:
    return {name: m.scale for name, m in model.named_modules() if isinstance(m, LoRALinear)}
