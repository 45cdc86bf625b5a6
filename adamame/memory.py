"""The memory plan: per-device bytes of every phase of a GRPO step (and of SFT), from config.json and the flags alone.

Why: a paper-scale run (512 prompts x 8 rollouts of up to 4,096 tokens on 8 GPUs) sits close to the card's memory in
two places, the rollout's KV cache and the update's activations, and a researcher must learn that before queueing
for GPUs, not after the first step. So every run (and `--plan`, which needs only config.json) builds this plan
before loading weights, prints it, and stops when it does not fit; and the run then obeys it: the plan sizes the
rollout's KV cache (in full-length rows), switches activation checkpointing on when the update would not fit without
it, and picks the chunked log-prob path when a micro-batch's full logits would not fit.

One source of truth: the sizes come from the code that allocates them. Parameters are counted on a meta-device copy
of the model (exact shapes, no memory); the KV cache, sampler and prefill from adamame.generate (the engine checks
the same numbers before it allocates); the logits as the [N, V] tensor the trainer asks for at N response positions.
Activations are the tensors autograd saves per token and layer, listed below (tests/test_memory.py measures them).

Phases (per device; W = ranks, N = parameters, b = bytes of the compute dtype, bf16 on CUDA, float32 on CPU):
    weights    full fine-tuning: float32 masters 4N / W, gradients 4N / W, AdamW moments 8N / W, and with beta > 0 a
               frozen reference copy f N / W; LoRA: the frozen base f N / W and the adapters' 16n / W. f = b when
               the checkpoint stores its weights in the compute dtype (held as stored: lossless), else 4
    rollout    weights + the plain rollout copy (N b, LoRA merged) + generate's paged KV cache, prefill, and the
               decode step and sampler for the most rows it lets run at once, and the tokens and log-probs of the
               rank's samples
    logprobs   weights + unsharded parameters (root + 2 layers, FSDP prefetches one) and float32 gradients + one
               layer's transient activations and the logits of one micro-batch (no autograd)
    update     the same + saved activations of one micro-batch (all layers, or only the layer inputs with
               checkpointing plus one layer recomputed) + a backward workspace (one layer) + the logits
The rollout also counts what only a GPU adds: with CUDA graphs the blocks the warm-up run leaves cached on the
capture stream, and the sampler as it runs there: the fused Triton one
(adamame/sampler.py: no [rows x vocabulary] buffer) unless top-k, top-p or ADAMAME_SAMPLER=torch need PyTorch's
(float32 buffers, the float64 copy that `cumsum(dtype=float64)` makes, and the graphs' static float32 logits).
The peak is the largest phase; a plan fits when the peak is at most the usable memory. On a GPU that is the card's
memory less a fixed reserve for what lives outside PyTorch's allocator (the CUDA context and kernel images ~0.6 GiB,
NCCL's buffers ~1 GiB on 8 ranks, library handles; together RESERVE_GIB = 2 GiB, a stated estimate that the GPU
check measures) and less 3% for fragmentation (the trainers turn on expandable segments, which keeps it small); this
replaces the flat 5% margin of earlier versions. On CPU: 85% of the available RAM shared by the local ranks.

How a run uses it: train_grpo.py and train_sft.py build the plan before loading any weight, print it, and stop with
exit status 3 when the peak would not fit the device (on a CPU run: the available RAM shared by the local ranks).
The run then obeys it: the rollout's KV cache (`--rollout-rows auto`), activation checkpointing
(`--activation-checkpointing auto`: on when the update would not fit without it), and the chunked hidden-state
log-prob path when a micro-batch's logits would not fit. A micro-batch is planned at `--micro-batch-tokens`, or at
one whole sequence (prompt + response limit) when that is longer. What keeps the phases small: rollouts run on a
plain copy of the policy (LoRA merged, no FSDP hooks) built for each step and freed after; the KV cache is paged
(adamame/paging.py), so a row holds only the blocks it has written; micro-batches are cut from length-sorted
sequences; logits exist only at response positions.

How far to trust it: sizes that come straight from the code (the rollout copy, the KV cache, the logits) are exact,
and a test compares them with the tensors allocated; activations are the tensors autograd saves per token and layer,
also compared with a measurement. What no GPU has checked yet is the allocator's overhead on top (the GPU check,
bench/README.md, measures it).

The plan of the paper's larger model at the paper's GRPO settings on 8 GPUs of 80 GiB (tests/fixtures/*/config.json
hold the public configurations; `--plan` needs only config.json and runs on any machine; tests/test_memory.py checks
this block against the command's output):

    $ python train_grpo.py --plan --model tests/fixtures/qwen3-4b --nproc-per-node 8 --gpu-memory-gib 80
    memory plan for tests/fixtures/qwen3-4b on 8 GPU(s)
    phase      what                                                                GiB
    ----------------------------------------------------------------------------------
    weights    frozen base weights (bfloat16), sharded 1/8                        0.94
    weights    trainable (LoRA r=32: weights, gradients, AdamW moments)           0.12
    rollout    rollout copy (bfloat16, LoRA merged)                               7.49
    rollout    KV cache: 14689 blocks of 32 slots (102 rows x 4608)              64.55
    rollout    sampler: fused (Triton), a few numbers per row                     0.00
    rollout    CUDA graphs: warm-up blocks                                        0.09
    rollout    prefill, decode step, outputs                                      2.28
    update     unsharded bfloat16 parameters (root + 2 layers), fp32 gradients     1.35
    update     activations, 32768 tokens (checkpointing on)                      12.68
    update     logits 32768 x 151936                                              9.27
    ----------------------------------------------------------------------------------
    weights    peak                                                               1.06
    rollout    peak                                                              75.47
    logprobs   peak                                                              14.59
    update     peak                                                              24.36
    usable: 75.6 GiB (80.0 less 2.0 outside the allocator and 3% for fragmentation)
    rollout: 512 samples (64 prompts x 8) in one call, at most 229 at once (a 2048-token reserve each)
    activation checkpointing on: without it the update would need 136.4 GiB
    plan: peak 75.5 GiB per GPU of 80.0 GiB: fits

Imports: torch; adamame: dist, generate, lora, model, paging.
"""

import importlib.util
import os
from dataclasses import dataclass, field

import torch

from .dist import compute_dtype
from .generate import PREFILL_TOKENS, cache_slots, free_bytes
from .lora import apply_lora, lora_modules
from .model import KVCache, PagedKVCache, Transformer, stored_dtype
from .paging import BLOCK, RESERVE, most_rows

GiB = 2**30


class PlanDoesNotFit(RuntimeError):
    """The plan's peak exceeds the device: a run stops before loading weights (exit status 3)."""


@dataclass
class Plan:
    device: str  # "cuda" or "cpu"
    world: int
    budget: int  # bytes the run may use per device
    total: int  # the device's memory (or the RAM share) the budget comes from
    items: list = field(default_factory=list)  # (phase, what, bytes)
    phases: dict = field(default_factory=dict)  # phase -> peak bytes
    rollout_rows: int = 0  # the rollout's paged KV cache, in full-length rows (generate's max_rows)
    activation_checkpointing: bool = False
    logits_chunk: int | None = None  # tokens per chunk of the chunked log-prob path; None = full logits
    notes: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)  # the exact tensor sizes behind some rows (tests compare them)
    advice: str = ""  # the knob that would make it fit, when it does not

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return not self.advice and self.peak <= self.budget

    def verdict(self) -> str:
        head = f"plan: peak {self.peak / GiB:.1f} GiB per {'GPU' if self.device == 'cuda' else 'process'} of " \
               f"{self.total / GiB:.1f} GiB"
        return f"{head}: fits" if self.fits else f"{head}: does not fit (try {self.advice})"

    def table(self) -> str:
        lines = [f"{'phase':10} {'what':62} {'GiB':>8}", "-" * 82]
        for phase, what, nbytes in self.items:
            lines.append(f"{phase:10} {what:62} {nbytes / GiB:8.2f}")
        lines.append("-" * 82)
        for phase, nbytes in self.phases.items():
            lines.append(f"{phase:10} {'peak':62} {nbytes / GiB:8.2f}")
        usable = f"usable: {self.budget / GiB:.1f} GiB"
        if self.device == "cuda":
            usable += f" ({self.total / GiB:.1f} less {RESERVE_GIB:.1f} outside the allocator and 3% for fragmentation)"
        lines += [usable] + self.notes
        return "\n".join(lines)

    def __str__(self):
        return self.table() + "\n" + self.verdict()


# ---------------------------------------------------------------------------------------------- sizes

def parameter_counts(cfg, lora_rank: int = 0) -> dict:
    """Exact parameter counts from a meta-device model: total N (tied weights once), largest tensor, one decoder
    layer, the root (embedding, final norm, untied lm_head) and the LoRA adapters."""
    with torch.device("meta"):
        model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    lora = 0
    if lora_rank > 0:
        apply_lora(model, lora_rank, 2 * lora_rank)
        lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_modules(model))
    return {"total": total, "largest": largest, "layer": layer, "root": total - cfg.num_hidden_layers * layer,
            "lora": lora, "lora_layer": lora // cfg.num_hidden_layers}


def layer_activation_bytes(cfg, lora_rank: int, dtype, fused: bool = False) -> int:
    """Bytes autograd saves per token in one decoder layer (the model's own code, bf16 or float32 compute):
    two RMSNorms (their float32 input and 1/rms), attention's q, k, v, output and float32 log-sum-exp, the MLP's gate,
    up and SiLU outputs; with LoRA also the inputs of the adapters (the normed inputs of q/k/v and of gate/up, the
    MLP product for down_proj) and the rank-r intermediate of each of the 7 adapters. `fused`: the layer kernels
    (adamame/layer_kernels.py, on CUDA) save each norm's input in the compute dtype (1/rms recomputed) and gate and
    up (SiLU recomputed)."""
    b = dtype.itemsize
    C, I = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    if fused:
        n = 2 * C * b + (2 * q + 2 * kv) * b + 4 * cfg.num_attention_heads + 2 * I * b
        n += (q + kv) * b if cfg.qk_norm else 0
    else:
        n = 2 * (4 * C + 4) + (2 * q + 2 * kv) * b + 4 * cfg.num_attention_heads + 3 * I * b
    if cfg.qk_norm and not fused:  # q_norm and k_norm: float32 inputs and 1/rms per head
        n += 4 * (q + kv) + 4 * (cfg.num_attention_heads + cfg.num_key_value_heads)
    if lora_rank > 0:
        n += (2 * C + I) * b + 7 * lora_rank * b
    return n


def checkpointed_layer_bytes(cfg, dtype) -> int:
    """Bytes autograd keeps per token for a layer under activation checkpointing: its input, nothing else."""
    return cfg.hidden_size * dtype.itemsize


def logits_tensor_bytes(tokens: int, vocab: int, dtype) -> int:
    """The [tokens, V] logits the model returns for `tokens` response positions."""
    return tokens * vocab * dtype.itemsize


def logits_bytes(tokens: int, vocab: int, dtype, triton: bool) -> int:
    """The logits tensor and what the log-prob path adds: nothing for the Triton kernel (one read, the gradient
    written in place); for the PyTorch reference four float32 copies (the scaled logits, exp, and the backward's
    softmax and one-hot gradients)."""
    return logits_tensor_bytes(tokens, vocab, dtype) + (0 if triton else 16 * tokens * vocab)


def persistent_bytes(counts: dict, world: int, lora_rank: int, reference_copy: bool, frozen_dtype) -> list:
    """What lives for the whole run, sharded: trainable weights as float32 masters with their gradients and AdamW
    moments; weights that do not train (a LoRA run's base, the reference copy) in `frozen_dtype` (dist.shard_model)."""
    n, frozen = counts["total"], dtype_name(frozen_dtype)
    if lora_rank > 0:
        return [(f"frozen base weights ({frozen}), sharded 1/{world}", frozen_dtype.itemsize * n // world),
                (f"trainable (LoRA r={lora_rank}: weights, gradients, AdamW moments)", 16 * counts["lora"] // world)]
    out = [(f"float32 master weights, sharded 1/{world}", 4 * n // world),
           ("trainable (all: gradients, AdamW moments)", 12 * n // world)]
    if reference_copy:
        out.append((f"{frozen} reference copy (full fine-tuning), sharded", frozen_dtype.itemsize * n // world))
    return out


def gathered_bytes(counts: dict, dtype, lora_rank: int) -> int:
    """What FSDP holds unsharded during a forward/backward: the root's parameters (kept for the backward) and two
    layers' (the one running and the one prefetched), with their adapters, in the compute dtype; and the trainable
    parameters' float32 gradients, which the trainers accumulate unsharded across a step's micro-batches (gradient
    sync off until the last): every parameter's with full fine-tuning, the adapters' with LoRA."""
    trainable = counts["lora"] if lora_rank > 0 else counts["total"]
    return (counts["root"] + 2 * (counts["layer"] + counts["lora_layer"])) * dtype.itemsize + 4 * trainable


RESERVE_GIB = 2.0  # per GPU, outside the allocator: CUDA context and kernels, NCCL buffers, library handles


def usable_bytes(device: str, total: int) -> int:
    """What the allocator may hold: a GPU's memory less RESERVE_GIB and 3% for fragmentation, or 85% of the RAM."""
    return int(0.97 * total - RESERVE_GIB * GiB) if device == "cuda" else int(0.85 * total)


def plan_target(nproc_per_node=None, gpu_memory_gib=None) -> tuple:
    """(device type, ranks, bytes per device) that `--plan` plans for: GPUs when --gpu-memory-gib is given or a GPU
    is visible (default: all visible GPUs, with this card's memory), else this machine's RAM for one process."""
    cuda = gpu_memory_gib is not None or torch.cuda.is_available()
    world = nproc_per_node or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    total = int(gpu_memory_gib * GiB) if gpu_memory_gib else device_memory("cuda" if cuda else "cpu", world)
    return ("cuda" if cuda else "cpu"), world, total


def device_memory(device: str, local_world: int = 1) -> int:
    """The card's memory, or on CPU the available RAM shared by the ranks on this machine."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return (free_bytes("cpu") or 8 * GiB) // max(1, local_world)


def shared_plan(make, rank: int, world: int, device) -> "Plan":
    """A run's plan, made on rank 0 by make(world, device type, bytes per device) (on CPU the RAM rank 0 sees
    decides) and broadcast, so every rank obeys the same one; printed by rank 0; PlanDoesNotFit when it does not."""
    box = [None]
    if rank == 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        box[0] = make(world, device.type, device_memory(device.type, local))
    torch.distributed.broadcast_object_list(box, src=0)
    plan = box[0]
    if rank == 0:
        print(plan)
    if not plan.fits:
        raise PlanDoesNotFit(plan.verdict())
    return plan


# ---------------------------------------------------------------------------------------------- the rollout's bytes
# what adamame.generate allocates, counted from its code

def sampler_bytes(rows: int, vocab: int, top_k: int = 0, top_p: float = 1.0, fused: bool = False) -> int:
    """Peak temporaries of one decode step's sampling for `rows` rows. fused (adamame/sampler.py, on a GPU with top-k
    0 and top-p 1): per row its token, log-probability, the programs' (M, S, candidate) and the merge's few numbers,
    at most 256 bytes; no [rows, V] buffer. Else sample_next's [rows, V] buffers (the step's float32 logits,
    log-probs, probabilities, and the float64 CDF with the float64 copy of the probabilities that
    cumsum(dtype=float64) makes first), plus top-k's masked copy and top-p's sort (values, int64 order, cumulative
    sums, masks)."""
    if fused:
        return rows * 256
    per_elem = 3 * 4 + 8 + 8 + (4 if top_k else 0) + (8 + 4 * 5 + 2 if top_p < 1.0 else 0)
    return rows * vocab * per_elem


def layer_transient_bytes(cfg, dtype) -> int:
    """Per token, the largest set of temporaries alive inside one layer's forward without autograd: the MLP's gate,
    up and product, and the attention's q/k/v/o."""
    width = 3 * cfg.intermediate_size + 4 * cfg.hidden_size + 2 * cfg.num_attention_heads * cfg.head_dim
    return width * dtype.itemsize


def step_bytes(cfg, rows: int, dtype) -> int:
    """Activations of one decode step of `rows` rows: one layer's temporaries and the logits before their float32
    copy. Small next to the cache; counted for completeness."""
    return rows * (layer_transient_bytes(cfg, dtype) + cfg.vocab_size * dtype.itemsize)


def prefill_bytes(cfg, tokens: int, prompt_len: int, dtype) -> int:
    """One prefill forward of `tokens` prompt tokens (<= PREFILL_TOKENS): its own cache, one layer's temporaries, the
    bool mask [rows, T, T] and the additive bias of the folded query heads (model.attention_bias: rows x rep x T x
    T rounded up to 16, in the compute dtype)."""
    rows = max(1, tokens // max(1, prompt_len))
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    return (KVCache.nbytes(cfg, rows, prompt_len, dtype) + tokens * layer_transient_bytes(cfg, dtype)
            + rows * prompt_len * prompt_len + rows * rep * prompt_len * (-(-prompt_len // 16) * 16) * dtype.itemsize)


def graph_bytes(cfg, rows: int, dtype, fused: bool = False) -> int:
    """With CUDA graphs: the blocks the warm-up run (on the capture stream, outside the graphs' pool) leaves cached
    there, one step's activations; without the fused sampler also the static float32 logits buffer, the float32 copy
    a captured step makes into it, and the warm-up's float32 logits."""
    return step_bytes(cfg, rows, dtype) + (0 if fused else 3 * 4 * rows * cfg.vocab_size)


def cache_blocks(rows: int, prompt_len: int, max_new_tokens: int) -> int:
    """Blocks of a paged KV cache the size of `rows` full-length rows (generate's max_rows), the scratch block with."""
    return rows * cache_slots(prompt_len, max_new_tokens) // BLOCK + 1


def rows_in_flight(rows: int, samples: int, prompt_len: int, max_new_tokens: int) -> int:
    """The most rows a generate call runs at once in a cache of `rows` full-length rows (adamame.paging.most_rows)."""
    return min(samples, most_rows(cache_blocks(rows, prompt_len, max_new_tokens), max_new_tokens))


def memory_needed(cfg, rows: int, samples: int, prompt_len: int, max_new_tokens: int, dtype, *, prompts=None,
                  top_k=0, top_p=1.0, graphs: bool = False, fused: bool = False) -> int:
    """Bytes one generate call allocates beyond the weights, for `samples` samples of `prompts` prompts (None: one
    each) decoded in a paged KV cache the size of `rows` full-length rows: the cache, the larger prefill (a chunk of
    prompts, or one preempted sample's prompt and response recomputed), one decode step and the sampler for the most
    rows in flight (fused: adamame/sampler.py), the prompts' first-token logits (float32), the samples' tokens and
    log-probs, and with CUDA graphs their buffers (graph_bytes)."""
    slots, live = cache_slots(prompt_len, max_new_tokens), rows_in_flight(rows, samples, prompt_len, max_new_tokens)
    # a prefill forward: rows of W slots (whole blocks; prompts, or preempted samples recomputed), as many as
    # PREFILL_TOKENS hold (one at least); its bias grows with W, so the worst W is found by trying each
    widths = [*range(BLOCK, min(slots, PREFILL_TOKENS) + 1, BLOCK), slots]  # past PREFILL_TOKENS: one row, widest
    prefill = max(prefill_bytes(cfg, max(W, PREFILL_TOKENS // W * W), W, dtype) for W in widths)
    if not graphs:  # the SDPA decode step (CPU, ADAMAME_KERNELS=torch) gathers one layer's keys and values of its rows
        prefill += 2 * live * slots * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize
    return (PagedKVCache.nbytes(cfg, cache_blocks(rows, prompt_len, max_new_tokens), dtype) + prefill
            + step_bytes(cfg, live, dtype) + sampler_bytes(live, cfg.vocab_size, top_k, top_p, fused)
            + 4 * (prompts or samples) * cfg.vocab_size + 12 * (samples + 1) * max_new_tokens
            + (graph_bytes(cfg, live, dtype, fused) if graphs else 0))

# ---------------------------------------------------------------------------------------------- the update's bytes

def _update(cfg, counts, tokens, *, lora_rank, dtype, ckpt: bool, chunk, triton: bool):
    """(activations, logits) bytes of one micro-batch's forward + backward."""
    b, L = dtype.itemsize, cfg.num_hidden_layers
    act = layer_activation_bytes(cfg, lora_rank, dtype, fused=triton)
    C = cfg.hidden_size
    shared = 2 * cfg.head_dim * b + 4 * C + 4  # rotary tables, the final norm's float32 input
    if ckpt:  # each layer keeps its input; the layer being recomputed keeps everything, and its backward
        saved = tokens * (L * checkpointed_layer_bytes(cfg, dtype) + 2 * act + shared)
    else:
        saved = tokens * (L * act + act + shared)
    if chunk is None:
        logits = logits_bytes(tokens, cfg.vocab_size, dtype, triton)
    else:  # hidden states of the response positions + one chunk's logits
        logits = tokens * C * b + logits_bytes(chunk, cfg.vocab_size, dtype, triton)
    return saved, logits


def _forward_only(cfg, tokens, dtype, chunk, triton: bool):
    transient = tokens * layer_transient_bytes(cfg, dtype)
    if chunk is None:
        return transient + logits_bytes(tokens, cfg.vocab_size, dtype, triton)
    return transient + tokens * cfg.hidden_size * dtype.itemsize + logits_bytes(chunk, cfg.vocab_size, dtype, triton)


def _weights_phase(cfg, world, total, device, lora_rank, reference_copy):
    """The plan's start, common to GRPO and SFT: (plan with its weights phase, parameter counts, the weights' bytes,
    the compute dtype, whether the Triton kernels run: the log-prob and loss kernels and the layer kernels)."""
    dtype = compute_dtype(device)
    plan = Plan(device, world, usable_bytes(device, total), total)
    counts = parameter_counts(cfg, lora_rank)
    frozen_dtype = dtype if stored_dtype(cfg) == dtype else torch.float32  # as dist.shard_model holds them
    weights = persistent_bytes(counts, world, lora_rank, reference_copy, frozen_dtype)
    plan.items += [("weights", what, nb) for what, nb in weights]
    plan.phases["weights"] = sum(nb for _, nb in weights)
    kernels = device == "cuda" and importlib.util.find_spec("triton") is not None and \
        os.environ.get("ADAMAME_KERNELS", "auto") != "torch"  # where the model runs them (model.fused_layers)
    return plan, counts, plan.phases["weights"], dtype, kernels


def grpo_plan(cfg, *, world: int, total: int, device: str, prompts_per_step: int, group_size: int,
              max_prompt_tokens: int, max_response_tokens: int, micro_batch_tokens: int, lora_rank: int,
              beta: float, rollout_rows="auto", activation_checkpointing="auto", top_k: int = 0,
              top_p: float = 1.0) -> Plan:
    """The GRPO plan for one device. prompts_per_step: the whole step's prompts (split over `world` ranks)."""
    plan, counts, base, dtype, triton = _weights_phase(cfg, world, total, device, lora_rank,
                                                       reference_copy=lora_rank == 0 and beta > 0)

    # rollout: one generate call of this rank's samples, in the largest paged KV cache (in full-length rows) whose
    # phase fits (capped by a number given on the command line)
    copy = counts["total"] * dtype.itemsize
    gather = counts["largest"] * 4  # while the copy is built: one gathered float32 tensor (+ its LoRA product)
    per_rank = max(1, prompts_per_step // world)
    samples = per_rank * group_size
    cap = samples if rollout_rows == "auto" else min(samples, int(rollout_rows))
    slots = cache_slots(max_prompt_tokens, max_response_tokens)

    # on a GPU the fused sampler (adamame/sampler.py) samples unless top-k / top-p need PyTorch's, or its switch is off
    fused = device == "cuda" and top_k == 0 and top_p == 1.0 and \
        (os.environ.get("ADAMAME_SAMPLER") or os.environ.get("ADAMAME_KERNELS", "auto")) != "torch"

    def rollout_peak(r):
        return base + copy + memory_needed(cfg, r, samples, max_prompt_tokens, max_response_tokens, dtype,
                                           prompts=per_rank, top_k=top_k, top_p=top_p, graphs=device == "cuda",
                                           fused=fused)

    rows = cap
    while rows > 1 and rollout_peak(rows) > plan.budget:
        rows -= 1
    plan.rollout_rows = rows
    blocks = cache_blocks(rows, max_prompt_tokens, max_response_tokens)
    kv = PagedKVCache.nbytes(cfg, blocks, dtype)
    plan.sizes.update(rollout_copy=copy, kv_cache=kv)
    live = rows_in_flight(rows, samples, max_prompt_tokens, max_response_tokens)
    graphs = graph_bytes(cfg, live, dtype, fused) if device == "cuda" else 0
    sampler = sampler_bytes(live, cfg.vocab_size, top_k, top_p, fused)
    plan.items += [("rollout", f"rollout copy ({dtype_name(dtype)}, LoRA merged)", copy),
                   ("rollout", f"KV cache: {blocks} blocks of {BLOCK} slots ({rows} rows x {slots})", kv),
                   ("rollout", "sampler: fused (Triton), a few numbers per row" if fused else
                    "sampler: float32 and float64 buffers of rows x vocabulary", sampler)]
    if graphs:
        plan.items.append(("rollout", "CUDA graphs: warm-up blocks" + ("" if fused else ", static logits"), graphs))
    plan.items.append(("rollout", "prefill, decode step, outputs", rollout_peak(rows) - base - copy - kv - sampler
                       - graphs))
    plan.phases["rollout"] = max(rollout_peak(rows), base + copy + 2 * gather)
    plan.notes.append(f"rollout: {samples} samples ({per_rank} prompts x {group_size}) in one call, at most {live} at "
                      f"once (a {min(RESERVE, max_response_tokens)}-token reserve each)")
    if rollout_peak(rows) > plan.budget:
        plan.advice = "a smaller --max-response-tokens or --group-size, or more GPUs"

    # update and log-prob forwards: one micro-batch of at most micro_batch_tokens padded tokens. Prefer chunked
    # logits (one extra lm_head matmul) to activation checkpointing (a second forward of every layer).
    gathered = gathered_bytes(counts, dtype, lora_rank)
    # a micro-batch holds at least one sequence, and never more tokens than this rank's rollouts of the step
    longest = max_prompt_tokens + max_response_tokens
    tokens = min(max(micro_batch_tokens, longest), per_rank * group_size * longest)
    ckpts = [False, True] if activation_checkpointing == "auto" else [activation_checkpointing == "on"]
    options = [(c, k) for c in ckpts for k in (None, 8192, 2048, 512) if k is None or k < tokens]
    costs = {o: _update(cfg, counts, tokens, lora_rank=lora_rank, dtype=dtype, ckpt=o[0], chunk=o[1], triton=triton)
             for o in options}
    ckpt, chunk = next((o for o in options if base + gathered + sum(costs[o]) <= plan.budget), options[-1])
    saved, logits = costs[(ckpt, chunk)]
    plan.activation_checkpointing, plan.logits_chunk = ckpt, chunk
    if ckpt and activation_checkpointing == "auto":
        plan.notes.append(f"activation checkpointing on: without it the update would need "
                          f"{(base + gathered + sum(costs[(False, None)])) / GiB:.1f} GiB")
    elif triton and not ckpt and activation_checkpointing == "auto":
        eager = _update(cfg, counts, tokens, lora_rank=lora_rank, dtype=dtype, ckpt=False, chunk=chunk, triton=False)
        if base + gathered + sum(eager) > plan.budget:
            plan.notes.append(f"activation checkpointing off: the layer kernels save {saved / GiB:.1f} GiB of "
                              f"activations where PyTorch's layers would save {eager[0] / GiB:.1f} GiB")
    plan.sizes.update(logits=logits_tensor_bytes(tokens if chunk is None else chunk, cfg.vocab_size, dtype))
    plan.items += [("update", f"unsharded {dtype_name(dtype)} parameters (root + 2 layers), fp32 gradients",
                    gathered),
                   ("update", f"activations, {tokens} tokens (checkpointing {'on' if ckpt else 'off'})", saved),
                   ("update", "logits " + (f"{tokens} x {cfg.vocab_size}" if chunk is None else
                                           f"in chunks of {chunk} tokens"), logits)]
    plan.phases["logprobs"] = base + gathered + _forward_only(cfg, tokens, dtype, chunk, triton)
    plan.phases["update"] = base + gathered + saved + logits
    if chunk is not None:
        plan.notes.append(f"log-probs in chunks of {chunk} tokens: with full logits of {tokens} tokens the update "
                          f"would not fit" + ("" if ckpt else " without checkpointing"))
    if plan.phases["update"] > plan.budget and not plan.advice:
        fit = _largest_fitting_tokens(cfg, counts, lora_rank=lora_rank, dtype=dtype, fixed=base + gathered,
                                     budget=plan.budget, triton=triton)
        plan.advice = f"--micro-batch-tokens {fit}" if fit >= longest else \
            "a smaller --max-response-tokens" + _or_more_gpus(lora_rank)
    if base > plan.budget:
        plan.advice = _or_more_gpus(lora_rank).removeprefix(", or ")
    return plan


def sft_plan(cfg, *, world: int, total: int, device: str, tokens: int, lora_rank: int,
             activation_checkpointing="auto") -> Plan:
    """The SFT plan: weights + one micro-batch (micro_batch_size x max_length tokens) forward and backward."""
    plan, counts, base, dtype, triton = _weights_phase(cfg, world, total, device, lora_rank, reference_copy=False)
    gathered = gathered_bytes(counts, dtype, lora_rank)
    for ckpt in ([False, True] if activation_checkpointing == "auto" else [activation_checkpointing == "on"]):
        saved, logits = _update(cfg, counts, tokens, lora_rank=lora_rank, dtype=dtype, ckpt=ckpt, chunk=None,
                                triton=triton)
        if base + gathered + saved + logits <= plan.budget:
            break
    plan.activation_checkpointing = ckpt
    if ckpt and activation_checkpointing == "auto":
        off = sum(_update(cfg, counts, tokens, lora_rank=lora_rank, dtype=dtype, ckpt=False, chunk=None, triton=triton))
        plan.notes.append(f"activation checkpointing on: without it the update would need "
                          f"{(base + gathered + off) / GiB:.1f} GiB")
    plan.items += [("update", f"unsharded {dtype_name(dtype)} parameters (root + 2 layers), fp32 gradients",
                    gathered),
                   ("update", f"activations, {tokens} tokens (checkpointing {'on' if ckpt else 'off'})", saved),
                   ("update", f"logits {tokens} x {cfg.vocab_size}", logits)]
    plan.phases["update"] = base + gathered + saved + logits
    if plan.phases["update"] > plan.budget:
        fit = _largest_fitting_tokens(cfg, counts, lora_rank=lora_rank, dtype=dtype, fixed=base + gathered,
                                     budget=plan.budget, triton=triton, full=True)
        plan.advice = f"--max-length {fit}" if fit else _or_more_gpus(lora_rank).removeprefix(", or ")
    return plan


def _or_more_gpus(lora_rank: int) -> str:
    """The knobs that shrink the sharded weights: more GPUs, and LoRA only when it is not on already."""
    return ", or more GPUs (--nproc-per-node)" + (" or LoRA (--lora-rank)" if lora_rank == 0 else "")


def _largest_fitting_tokens(cfg, counts, *, lora_rank, dtype, fixed, budget, triton, full=False):
    """The largest micro-batch (a multiple of 256 tokens) whose update fits with checkpointing; 0 if none does."""
    def fits(t):
        saved, logits = _update(cfg, counts, t, lora_rank=lora_rank, dtype=dtype, ckpt=True,
                                chunk=None if full or t <= 512 else 512, triton=triton)
        return fixed + saved + logits <= budget
    lo, hi = 0, 1 << 20
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")
