"""A model of one whole GRPO step per GPU at the paper's shape: rollout, scoring, log-probs and update, kernel by kernel.

Why: bench/generate.py models the rollout, but by FLOPs the trainer's forwards and backwards are as large, and where
the time goes decides what is worth making fast. This prices the trainer's passes with the rollout model's constants,
for both paper models, before and after the fused layer kernels and the fused GRPO loss (adamame/layer_kernels.py,
adamame/grpo_kernels.py):

    python bench/step.py        # ~1 min on 2 CPU cores; the last line is the prediction

One GPU of 8: 64 prompts x 8 samples, lengths from bench/generate.py's rollout_lengths (the shared RL prompts when
present; responses: 20% reach 4,096 tokens, the rest uniform), the paper's settings (512 prompts a step, mini-batches
of 256, one PPO epoch, LoRA r = 32, beta = 0.001, --micro-batch-tokens 32768, pi_old recomputed):
  rollout    bench/generate.py's step-time model of the paged engine (the same for before and after)
  scoring    measured here: adamame.rollout.score (answer check, format, language id) on 512 responses of the modelled
             lengths, built from the shared multilingual exemplar solutions (synthetic text without them)
  log-probs  forwards without autograd: pi_ref (adapters off) of every sequence, pi_old of all but the first
             mini-batch (its pi_old comes from the update's own forward)
  update     forward + backward of every micro-batch; with activation checkpointing a second forward of each layer
Micro-batches are the trainer's (adamame.dist.micro_batches over length-sorted sequences, per mini-batch for the
update). Each micro-batch shape [b, T] is recorded on the meta device (bench/kernel_count.py's recorder: every aten and
adamame op with its bytes and a GEMM's FLOPs) with 1 and 2 layers, every op priced like the decode step's,
max(bytes / 3.0e12, FLOPs / 790e12, 2 us), and the layers extrapolated. Attention is one flash kernel each way: causal
FLOPs 2 b H T^2 d forward and 2.5 times that backward, bytes of its inputs and outputs. The lm_head GEMM and the loss
kernel are priced from their shapes (the kernel reads the [N, V] logits once forward, reads and writes them backward;
the chunked path adds a second GEMM and read in the backward); the loss's PyTorch ops on [b, T] are recorded too.
Not modelled: FSDP's all-gathers and reduce-scatters (overlapped with compute), the optimizer step (LoRA's ~30 M
parameters), host time.

"before" is the trainer of commit 7472f9d: PyTorch layers, the log-prob kernel then policy_loss, and its plan's
choices (checkpointing on and full logits for both models, as its `--plan` printed). "after" is this code: the layer
kernels (with their backward), the fused loss, and the plan's choices now (the 1.5B without checkpointing, its logits
in chunks of 8,192 tokens). Last line: `predicted GRPO step per GPU (H100 model): ...`.
"""

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import kernel_count as kc  # noqa: E402
from generate import H100, KERNEL_FLOOR, rollout_lengths  # noqa: E402

MODELS = ("deepseek-r1-distill-qwen-1.5b", "qwen3-4b")
PAPER = dict(prompts=512, world=8, group=8, mini_batch_prompts=256, micro_batch_tokens=32768, lora_rank=32,
             max_prompt=512, max_response=4096)
BEFORE_PLAN = {m: (True, None) for m in MODELS}  # (checkpointing, logits chunk) of commit 7472f9d's --plan
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- flash attention

@torch.library.custom_op("bench::flash", mutates_args=())
def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("bench::flash only records (meta device)")


@flash.register_fake
def _(q, k, v):
    return torch.empty_like(q)


@torch.library.custom_op("bench::flash_backward", mutates_args=())
def flash_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise RuntimeError("bench::flash_backward only records (meta device)")


@flash_backward.register_fake
def _(dout, q, k, v):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


flash.register_autograd(lambda ctx, dout: flash_backward(dout, *ctx.saved_tensors), setup_context=_flash_setup)


# ---------------------------------------------------------------------------------------------- recording

def record_pass(cfg, b, T, *, kernels, train, ckpt, layers):
    """The ops of one micro-batch [b, T] through the embedding, `layers` decoder layers and the final norm (forward,
    and backward when `train`), LoRA r = 32 in bf16 on the meta device, flash attention for SDPA."""
    import dataclasses

    import adamame.model as M
    from adamame.dist import _checkpoint_forward
    from adamame.lora import apply_lora

    with torch.device("meta"):
        model = M.Transformer(dataclasses.replace(cfg, num_hidden_layers=layers)).to(torch.bfloat16)
        apply_lora(model, PAPER["lora_rank"], 2 * PAPER["lora_rank"])
        model.to(torch.bfloat16)
    if ckpt and train:
        for layer in model.model.layers:
            _checkpoint_forward(layer)
    ids = torch.zeros(b, T, dtype=torch.long, device="meta")
    saved = M.attention, os.environ.get("ADAMAME_KERNELS")
    M.attention = lambda q, k, v, mask=None, enable_gqa=False: flash(q, k, v)
    os.environ["ADAMAME_KERNELS"] = "triton" if kernels else "torch"
    rec = kc.recorder()
    try:
        with rec, torch.set_grad_enabled(train):
            h = model(ids, head=lambda hidden, weight: hidden)
            if train:
                h.backward(torch.empty_like(h))
    finally:
        M.attention = saved[0]
        os.environ.pop("ADAMAME_KERNELS") if saved[1] is None else os.environ.update(ADAMAME_KERNELS=saved[1])
    H, d = cfg.num_attention_heads, cfg.head_dim
    fwd = 2 * b * H * T * T * d  # causal: half of QK^T and PV
    return [(n, k, nb, fwd if n == "bench.flash" else 2.5 * fwd if n == "bench.flash_backward" else f)
            for n, k, nb, f in rec.ops]


def record_loss(b, T, n, *, fused, train):
    """The loss's PyTorch ops on a micro-batch of b sequences, T padded tokens, n response tokens (the kernels
    themselves are priced in head_seconds): before, the log-probs scattered to [b, T] and policy_loss; after, the
    fused terms scattered and `aggregate`."""
    from adamame.grpo_kernels import aggregate, policy_loss

    dev = "meta"
    mask = torch.empty(b, T, dtype=torch.bool, device=dev)
    rec = kc.recorder()
    with rec, torch.set_grad_enabled(train):
        flat = [torch.empty(n, device=dev, requires_grad=train) for _ in range(3)]
        per_tok = [torch.empty(b, T, device=dev) for _ in range(2)]
        adv = torch.empty(b, device=dev)

        def scatter(v):
            return torch.zeros(b, T, dtype=v.dtype, device=dev).masked_scatter(mask, v)
        if fused:
            clipped = scatter(torch.empty(n, dtype=torch.bool, device=dev))
            loss, _ = aggregate(scatter(flat[0]), scatter(flat[1]), scatter(flat[2]), clipped, mask,
                                old_logprobs=per_tok[0], num_seqs=b, num_tokens=n)
        else:
            loss, _ = policy_loss(scatter(flat[0]), adv, mask, old_logprobs=per_tok[0], ref_logprobs=per_tok[1],
                                  num_seqs=b, num_tokens=n)
        if train:
            loss.backward()
    return rec.ops


def price(ops, gpu=H100, floor=KERNEL_FLOOR) -> float:
    return sum(max(nb / gpu["bandwidth"], f / gpu["flops"], floor) + (k - 1) * floor for _, k, nb, f in ops)


def head_seconds(cfg, n, *, train, chunk, gpu=H100, floor=KERNEL_FLOOR) -> float:
    """The lm_head GEMM at n response positions and the loss kernel (bf16 logits): forward one GEMM and one read of
    the logits; backward one read and one write and the GEMM for d(hidden) (the lm_head is frozen); the chunked path
    recomputes the GEMM and the forward read in the backward."""
    C, V = cfg.hidden_size, cfg.vocab_size
    gemm = max(2 * n * C * V / gpu["flops"], 2 * (n * C + V * C + n * V) / gpu["bandwidth"], floor)
    read = max(2 * n * V / gpu["bandwidth"], floor)
    t = gemm + read
    if train:
        t += 2 * read + gemm + ((gemm + read) if chunk else 0)
    return t


class Pricer:
    """Seconds of a micro-batch pass, recordings cached by shape."""

    def __init__(self, cfg):
        self.cfg, self.cache = cfg, {}

    def micro_batch(self, b, T, n, *, kernels, train, ckpt, chunk) -> float:
        key = (b, T, n, kernels, train, ckpt, chunk is not None)
        if key not in self.cache:
            L = self.cfg.num_hidden_layers
            one, two = (price(record_pass(self.cfg, b, T, kernels=kernels, train=train, ckpt=ckpt, layers=n_))
                        for n_ in (1, 2))
            loss = price(record_loss(b, T, n, fused=kernels, train=train))
            self.cache[key] = one + (L - 1) * (two - one) + head_seconds(self.cfg, n, train=train, chunk=chunk) + loss
        return self.cache[key]


# ---------------------------------------------------------------------------------------------- the step

def micro_batch_shapes(plens, resp, indices, budget):
    from adamame.dist import micro_batches

    alone = not torch.distributed.is_initialized()
    if alone:  # micro_batches agrees its count with the other ranks: here, none
        torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=torch.distributed.HashStore())
    try:
        mbs = micro_batches(indices, budget, lambda j: plens[j] + resp[j], "cpu")
    finally:
        if alone:
            torch.distributed.destroy_process_group()
    return [(len(mb), max(plens[j] + resp[j] for j in mb), sum(resp[j] for j in mb)) for mb in mbs]


def trainer_seconds(cfg, plens, resp, *, kernels, ckpt, chunk, pricer) -> dict:
    """log-probs (pi_ref of all, pi_old of all but the first mini-batch) and the update, in seconds."""
    per_mini = PAPER["mini_batch_prompts"] // PAPER["world"] * PAPER["group"]
    everything = list(range(len(plens)))
    minis = [everything[i:i + per_mini] for i in range(0, len(everything), per_mini)]
    budget = PAPER["micro_batch_tokens"]

    def run(indices, train):
        return sum(pricer.micro_batch(b, T, n, kernels=kernels, train=train, ckpt=ckpt, chunk=chunk)
                   for b, T, n in micro_batch_shapes(plens, resp, indices, budget))
    logprobs = run(everything, False) + run(everything[per_mini:], False)
    update = sum(run(mini, True) for mini in minis)
    return {"logprobs": logprobs, "update": update}


def scoring_seconds(plens, resp, seed=0) -> dict:
    """adamame.rollout.score on responses of the modelled lengths (characters = tokens x CHARS_PER_TOKEN), timed."""
    from generate import CHARS_PER_TOKEN

    from adamame.data import Question
    from adamame.language import TRAIN_LANGUAGES, get_detector
    from adamame.rollout import Rollout, score

    rng = random.Random(seed)
    path = os.path.join(ROOT, "..", "shared", "data", "sft", "mgsm_exemplars.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            texts = [(r["lang"], r["solution"]) for r in map(json.loads, f) if r.get("solution")]
        source = f"shared exemplar solutions ({len(texts)})"
    else:
        texts, source = [("en", "Roger has 5 balls. He buys 2 cans of 3 balls each, so 5 + 2 * 3 = 11 balls. ")], \
            "synthetic English"
    questions, rolls = [], []
    for i, n in enumerate(resp):
        lang, text = texts[rng.randrange(len(texts))]
        body = (text + " ") * (1 + int(n * CHARS_PER_TOKEN) // (len(text) + 1))
        body = body[:int(n * CHARS_PER_TOKEN)] + f" \\boxed{{{i}}}"
        questions.append(Question(id=str(i), lang=lang, prompt="", answer=str(i if i % 2 else i + 1)))
        rolls.append(Rollout(question=i, prompt_ids=[], tokens=[], text=body, finish_reason="stop", logprobs=None,
                             raw=body, prompt_text="<think>"))
    detector = get_detector("langid", tuple(TRAIN_LANGUAGES))
    score(rolls[:8], questions, "prefix", detector)  # warm: the identifier's model loads once per run
    t = time.perf_counter()
    score(rolls, questions, "prefix", detector)
    return {"seconds": time.perf_counter() - t, "source": source, "responses": len(rolls)}


def rollout_seconds(name, plens, resp) -> float:
    """bench/generate.py's step-time model of the paged engine for this model."""
    from generate import engine_kernels, model_shape, step_time_model

    from adamame.memory import cache_blocks
    from bench.schedule import paged_schedule

    shape = model_shape(name)
    rep = shape["cfg"].num_attention_heads // shape["cfg"].num_key_value_heads
    sched = paged_schedule(plens, resp, 4096, blocks=cache_blocks(shape["rows"], 512, 4096), n=8, rep=rep,
                           trace=True)
    return step_time_model(shape, [sched], engine_kernels(shape["cfg"]))["seconds"]


def plan_choices(cfg) -> tuple:
    """(activation checkpointing, logits chunk) of the memory plan now, on 8 GPUs of 80 GiB."""
    from adamame.memory import GiB, grpo_plan

    plan = grpo_plan(cfg, world=8, total=80 * GiB, device="cuda", prompts_per_step=PAPER["prompts"],
                     group_size=PAPER["group"], max_prompt_tokens=PAPER["max_prompt"],
                     max_response_tokens=PAPER["max_response"], micro_batch_tokens=PAPER["micro_batch_tokens"],
                     lora_rank=PAPER["lora_rank"], beta=0.001)
    return plan.activation_checkpointing, plan.logits_chunk


def main():
    plens, resp, source = rollout_lengths()
    tokens = sum(plens) + sum(resp)
    print(f"one GPU of {PAPER['world']}: {len(plens)} sequences, {tokens:,} tokens ({sum(resp):,} response; prompts: "
          f"{source}); H100 model: {H100['bandwidth'] / 1e12:.1f} TB/s, {H100['flops'] / 1e12:.0f} TFLOP/s, "
          f"{KERNEL_FLOOR * 1e6:.0f} us at least a kernel")
    sc = scoring_seconds(plens, resp)
    print(f"scoring (measured on this CPU, {sc['source']}): {sc['seconds']:.2f} s for {sc['responses']} responses")
    results = {}
    for name in MODELS:
        cfg = kc.paper_config(name)
        pricer = Pricer(cfg)
        r = {"rollout": rollout_seconds(name, plens, resp), "scoring": sc["seconds"]}
        for when, kernels, (ckpt, chunk) in (("before", False, BEFORE_PLAN[name]), ("after", True, plan_choices(cfg))):
            t = trainer_seconds(cfg, plens, resp, kernels=kernels, ckpt=ckpt, chunk=chunk, pricer=pricer)
            t["total"] = r["rollout"] + r["scoring"] + t["logprobs"] + t["update"]
            t["checkpointing"], t["chunk"] = ckpt, chunk
            r[when] = t
            print(f"  {name} {when}: log-probs {t['logprobs']:.1f} s, update {t['update']:.1f} s (checkpointing "
                  f"{'on' if ckpt else 'off'}, logits {'full' if chunk is None else f'in chunks of {chunk}'}), "
                  f"total {t['total']:.1f} s")
        results[name] = r
        print(f"  {name}: rollout {r['rollout']:.1f} s, after / before {r['after']['total'] / r['before']['total']:.3f}")
    short = {n: n.replace("deepseek-", "") for n in results}
    print("predicted GRPO step per GPU (H100 model): " + "; ".join(
        f"{short[n]} rollout {r['rollout']:.1f} s, log-probs {r['after']['logprobs']:.1f} s, update "
        f"{r['after']['update']:.1f} s, total {r['after']['total']:.1f} s (before: {r['before']['total']:.1f} s)"
        for n, r in results.items()))
    return results


if __name__ == "__main__":
    main()
