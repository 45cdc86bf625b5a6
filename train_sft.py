"""Stage 1 of AdaMame: multilingual reasoning SFT with a plain FSDP2 loop.

    torchrun --nproc_per_node N train_sft.py --model DIR --data FILE.jsonl --out DIR [--max-steps N ...]

The loop, one optimizer step per global batch of --batch-size examples: each rank takes its share of the
batch, runs --micro-batch-size examples at a time (gradient accumulation), and the loss is the mean negative
log-likelihood of the target tokens over the whole global batch (prompt tokens carry no loss), so N ranks
compute exactly what one process would. Then gradient clipping, AdamW, a cosine schedule with linear warm-up,
a metrics row, and an atomic checkpoint every --save-every steps. At the end the model (LoRA merged with scale
alpha / rank) is exported to --out/final as a Hugging Face folder with the tokenizer.

Defaults are the paper's settings (LoRA rank 8 / alpha 16 on all linear layers, lr 2e-4 cosine with 10% warm-up,
4 epochs, max length 8192, effective batch 8). With no --model/--data it runs the built-in toy task (adamame/toy.py) in
two stages on a laptop CPU: a base stage that reasons in English unless asked otherwise (what a base reasoning model
does), then Stage 1 on query-language traces only.
"""

import argparse
import json
import math
import os
import textwrap
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from adamame import checkpoint, dist, memory
from adamame.chat import load_tokenizer, tokenize_sft
from adamame.cli import HelpFormatter, check_flags, run_trainer
from adamame.data import DataError, length_grouped_batches, read_sft
from adamame.hf import load_model, read_config, resolve
from adamame.grpo_kernels import token_logprobs
from adamame.lora import apply_lora
from adamame.memory import sft_plan
from adamame.report import Reporter, require_reporter
from adamame.toy import build_toy


def parse_args(argv=None):
    toy = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in TOY_SETTINGS.items())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=textwrap.fill(
        f"The toy task (no --model/--data) uses its own settings wherever the command line gives none: {toy} "
        f"(its base stage: --max-steps {TOY_BASE_STEPS}); it prints them when it starts.", 116))
    ap.add_argument("--model", help="Hugging Face model folder (config.json, safetensors, tokenizer) or hub id; "
                                    "default: the toy task's model, built into --out")
    ap.add_argument("--data", help="SFT JSON Lines: lang, prompt|question, response|trace+answer; "
                                   "default: the toy task's data")
    ap.add_argument("--out", default="runs/sft", help="checkpoints, metrics.jsonl and final/ go here")
    ap.add_argument("--epochs", type=float, default=4, help="passes over the data (the paper's)")
    ap.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    ap.add_argument("--stop-after", type=int, help="exit after this step, keeping the full run's schedule "
                                                   "(for time-limited jobs; continue with --resume)")
    ap.add_argument("--batch-size", type=int, default=8, help="global batch in examples (the paper's)")
    ap.add_argument("--micro-batch-size", type=int, default=1, help="examples per forward on each rank")
    ap.add_argument("--max-length", type=int, default=8192, help="longer examples are dropped (the paper's)")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (the paper's)")
    ap.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warm-up fraction (the paper's)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (not given in the paper)")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (not given in the paper)")
    ap.add_argument("--lora-rank", type=int, default=8, help="LoRA rank, 0 = full fine-tuning (the paper's 8)")
    ap.add_argument("--lora-alpha", type=float, default=16, help="LoRA alpha (the paper's)")
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (not given in the paper)")
    ap.add_argument("--activation-checkpointing", choices=("auto", "on", "off"), default="auto",
                    help="recompute layer activations in backward: auto is on when the memory plan needs it (the "
                         "paper used it)")
    ap.add_argument("--plan", action="store_true",
                    help="print the memory plan from --model's config.json and exit (0: fits, 3: does not fit)")
    ap.add_argument("--nproc-per-node", type=int, help="with --plan: ranks (default: the GPUs visible, else 1)")
    ap.add_argument("--gpu-memory-gib", type=float,
                    help="with --plan: GiB per GPU (default: this machine's GPU; without a GPU, its RAM)")
    ap.add_argument("--save-every", type=int, default=200, help="checkpoint every K steps")
    ap.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run in --out (without it or --resume, a run there stops at once)")
    ap.add_argument("--report-to", choices=("none", "tensorboard", "wandb"), default="none",
                    help="also send every metrics.jsonl scalar to TensorBoard (--out/tensorboard) or Weights & Biases "
                         "(optional packages)")
    ap.add_argument("--seed", type=int, default=0, help="seed of LoRA initialisation and data order")
    args = ap.parse_args(argv)
    if args.model is None and args.data is None:  # the toy task: its own settings where the command line gives none
        base_steps = args.max_steps or TOY_BASE_STEPS  # a --max-steps given sets both stages
        ap.set_defaults(**TOY_SETTINGS)
        args = ap.parse_args(argv)
        args.base_steps = base_steps
    return args


def lr_at(step, total, peak, warmup_ratio):
    """Linear warm-up over the first warmup_ratio * total steps, then cosine decay to 0."""
    warm = max(1, round(warmup_ratio * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def collate(encoded, pad_id):
    """Right-padded input ids [B, T], next-token targets [B, T] and the loss mask [B, T].

    Position k predicts token k+1 (the last position predicts padding); the mask is True exactly where token k+1
    belongs to the target, and only those positions get logits.
    """
    T = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), T, dtype=torch.bool)
    for i, (seq, n_prompt) in enumerate(encoded):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, n_prompt - 1:len(seq) - 1] = True
    return ids, torch.cat([ids[:, 1:], torch.full((len(encoded), 1), pad_id)], 1), mask


# The embedded default (no --model/--data): the toy task of adamame/toy.py in two stages, sized for a laptop CPU. A
# base stage stands in for the base reasoning model (it answers a plain question in English and a "reason in
# <language>" request in that language); Stage 1 is the paper's SFT on plain questions with query-language traces
# only. Flags given on the command line still win (--max-steps: both stages).
TOY_SETTINGS = dict(lora_rank=0, lr=3e-3, batch_size=64, micro_batch_size=32, max_steps=60, max_length=128,
                    warmup_ratio=0.05, save_every=200)
TOY_BASE_STEPS = 700


def prepare_default(args, rank):
    """Build (once) the toy model folder and data under --out, train its base stage (once) into --out/base (with
    TOY_SETTINGS, which parse_args made the defaults). Stage 1 then starts from the base stage's model."""
    if rank == 0:
        print("toy task settings: " + ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in TOY_SETTINGS)
              + f" (its base stage: --max-steps {args.base_steps})")
    paths = build_toy(args.out, rank)
    base = os.path.join(args.out, "base")
    if not os.path.exists(os.path.join(base, "final", "config.json")):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in TOY_SETTINGS.items() if k != "max_steps"]
        main(["--model", paths["model"], "--data", paths["base"], "--out", base, "--seed", str(args.seed),
              "--overwrite", "--max-steps", str(args.base_steps), *flags], keep_process_group=True)
    return os.path.join(base, "final"), paths["sft"]


def make_plan(args, model_dir, world, device_type, total):
    return sft_plan(read_config(model_dir), world=world, total=total, device=device_type,
                    tokens=args.micro_batch_size * args.max_length, lora_rank=args.lora_rank,
                    activation_checkpointing=args.activation_checkpointing)


def plan_only(args):
    """--plan: the plan from config.json alone (no process group, no weights), then exit 0 or 3."""
    if not args.model:
        raise DataError("--plan needs --model (a folder with config.json)")
    device, world, total = memory.plan_target(args.nproc_per_node, args.gpu_memory_gib)
    plan = make_plan(args, resolve(args.model), world, device, total)
    print(f"memory plan for {args.model} on {world} {'GPU(s)' if device == 'cuda' else 'process(es)'}")
    print(plan)
    return plan


@dataclass
class Run:
    """What an SFT run holds from its setup to its end (one per rank)."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    tok: object  # the tokenizer
    kept: list  # (token ids, prompt length) of every example that fits --max-length
    steps_per_epoch: int
    total: int  # optimizer steps
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list  # the trainable parameters
    paths: dict  # checkpoint, metrics
    order: dict = field(default_factory=dict)  # {epoch: that epoch's length-grouped batches}


def setup(args) -> Run:
    """Process group, toy task (if no --model/--data), data, memory plan, model (adapters, sharding), optimizer."""
    require_reporter(args.report_to)
    rank, world, device = dist.setup()
    torch.manual_seed(args.seed)  # identical LoRA initialisation on every rank and for every world size
    say = print if rank == 0 else (lambda *a, **k: None)
    if (args.model is None) != (args.data is None):
        raise DataError("give both --model and --data, or neither (to run the built-in example)")
    checkpoint.lock_output(args.out, keep=args.resume or args.overwrite)  # before anything is written there
    model_dir, data_path = (resolve(args.model), args.data) if args.model else prepare_default(args, rank)
    if args.batch_size % world or (args.batch_size // world) % args.micro_batch_size:
        raise DataError(f"--batch-size {args.batch_size} must split into {world} ranks x whole micro-batches of "
                        f"{args.micro_batch_size}")

    # data: render, tokenize, drop over-long examples (never truncate mid-answer)
    tok = load_tokenizer(model_dir)
    encoded = [tokenize_sft(tok, ex) for ex in read_sft(data_path)]
    kept = [e for e in encoded if len(e[0]) <= args.max_length]
    if len(kept) < len(encoded):
        say(f"dropped {len(encoded) - len(kept)} of {len(encoded)} examples longer than {args.max_length} tokens")
    if len(kept) < args.batch_size:
        raise DataError(f"{data_path}: {len(kept)} usable examples, fewer than one batch of {args.batch_size}")
    steps_per_epoch = len(kept) // args.batch_size
    total = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))

    # the memory plan (made on rank 0, shared), then the model: load on CPU, add adapters, shard (layers, then root)
    plan = memory.shared_plan(lambda w, dev, total: make_plan(args, model_dir, w, dev, total), rank, world, device)
    model = load_model(model_dir)
    if args.lora_rank > 0:
        apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    dist.shard_model(model, device, plan.activation_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    say(f"{len(kept)} examples, {world} rank(s), {total} steps, {sum(p.numel() for p in params) / 1e6:.2f}M "
        f"trainable parameters ({'LoRA r=%d' % args.lora_rank if args.lora_rank else 'full fine-tuning'})")
    paths = {"checkpoint": os.path.join(args.out, "checkpoint.pt"), "metrics": os.path.join(args.out, "metrics.jsonl")}
    return Run(args, rank, world, device, tok, kept, steps_per_epoch, total, model, optimizer, params, paths)


def resume_or_start(run) -> int:
    """The first step: from --out/checkpoint.pt with --resume (its log cut back to it), else 0 with an empty log."""
    os.makedirs(run.args.out, exist_ok=True)
    if not run.args.resume:
        checkpoint.start_fresh([run.paths["metrics"]] + ([run.paths["checkpoint"], os.path.join(run.args.out, "final")]
                                                         if run.args.overwrite else []))
        return 0
    start = checkpoint.resume_training_state(run.paths["checkpoint"], run.model, run.optimizer, run.args,
                                             ("seed", "batch_size", "lora_rank", "max_length"), [run.paths["metrics"]])
    if run.rank == 0:
        print(f"resumed from {run.paths['checkpoint']} at step {start}")
    return start


def sft_step(run, step):
    """One optimizer step over the global batch of `step`; returns its metrics row."""
    args, model, device = run.args, run.model, run.device
    t0 = time.perf_counter()
    epoch, idx = divmod(step, run.steps_per_epoch)
    if epoch not in run.order:  # one epoch's batch order at a time
        run.order.clear()
        run.order[epoch] = length_grouped_batches([len(e[0]) for e in run.kept], args.batch_size, args.seed, epoch)
    batch = [run.kept[j] for j in run.order[epoch][idx]]
    n_target = sum(len(seq) - n_prompt for seq, n_prompt in batch)  # the whole global batch
    mine = batch[run.rank::run.world]
    micro = [mine[i:i + args.micro_batch_size] for i in range(0, len(mine), args.micro_batch_size)]
    pad_id = run.tok.pad_token_id if run.tok.pad_token_id is not None else 0
    loss_sum = torch.zeros((), device=device)  # summed on the device: one host sync per step, not per micro-batch
    model.train()
    for i, mb in enumerate(micro):
        model.set_requires_gradient_sync(i == len(micro) - 1)
        ids, targets, mask = (t.to(device) for t in collate(mb, pad_id))
        nll = -token_logprobs(model(ids, logits_at=mask), targets[mask]).sum()  # logits at target positions only
        # FSDP averages gradients over ranks, so scale by world / (target tokens in the global batch)
        (nll * run.world / n_target).backward()
        loss_sum += nll.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, args.grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    lr = lr_at(step, run.total, args.lr, args.warmup_ratio)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss = dist.all_sum(loss_sum.item(), device) / n_target
    if not math.isfinite(loss):
        raise checkpoint.TrainingStopped(f"step {step + 1}: loss is {loss}; stopping "
                                         f"(last good checkpoint: {run.paths['checkpoint']})")
    dt = time.perf_counter() - t0
    return {"step": step + 1, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
            "tokens_per_s": sum(len(s) for s, _ in batch) / dt, "time": dt}


def check_args(args):
    check_flags(args, positive=("epochs", "max_steps", "stop_after", "batch_size", "micro_batch_size", "max_length",
                                "lr", "grad_clip", "lora_alpha", "nproc_per_node", "gpu_memory_gib", "save_every"),
                non_negative=("weight_decay", "lora_rank"), fractions={"warmup_ratio": (0, 1), "lora_dropout": (0, 1)})


def main(argv=None, keep_process_group=False):
    args = parse_args(argv)
    check_args(args)
    if args.plan:
        return 0 if plan_only(args).fits else 3
    run = setup(args)
    start = resume_or_start(run)
    reporter = Reporter(args.report_to, args.out, vars(args), run.rank)
    bar = tqdm(total=run.total, initial=start, desc="sft", disable=run.rank != 0, dynamic_ncols=True)
    end = min(run.total, args.stop_after) if args.stop_after else run.total
    losses = []
    for step in range(start, end):
        with dist.stop_if_a_rank_is_lost(run.rank, step + 1):
            row = sft_step(run, step)
            losses.append(row["loss"])
            if run.rank == 0:
                with open(run.paths["metrics"], "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                reporter.log(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if (step + 1) % args.save_every == 0 or step + 1 == end:
                checkpoint.save_training_state(run.paths["checkpoint"], run.model, run.optimizer, args, step + 1)
    bar.close()
    reporter.close()
    if end == run.total:
        checkpoint.export_hf(run.model, run.tok, os.path.join(args.out, "final"))
        if run.rank == 0:
            print(f"exported {os.path.join(args.out, 'final')}")
    if run.rank == 0 and losses:
        print(f"steps {start + 1}-{end}: loss {losses[0]:.4f} -> {losses[-1]:.4f}; metrics in {run.paths['metrics']}")
    if not keep_process_group:  # train_grpo.py's toy demo runs this stage first in the same processes
        dist.cleanup()
    return 0


if __name__ == "__main__":
    run_trainer(main, lambda: parse_args().out)
