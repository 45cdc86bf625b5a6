"""Stage 2 of AdaMame: GRPO with the scheduled language-alignment bonus, on a plain FSDP2 loop.

    torchrun --nproc_per_node N train_grpo.py --model DIR --data FILE.jsonl --out DIR [--max-steps N ...]
    python train_grpo.py --plan --model DIR --nproc-per-node 8 --gpu-memory-gib 80     (the memory plan only)

Before loading any weight, the run builds its memory plan (adamame/memory.py) from config.json and the flags,
prints it, and stops (exit 3) if it does not fit; the plan sets the rollout's KV-cache rows, activation
checkpointing and the log-prob path. Then one RL step (t = step, T = total steps) is five phases:
  1. rollout: this rank's share of --batch-prompts prompts (balanced over languages), --group-size samples each, on
     a plain copy of the current policy (LoRA merged, no FSDP hooks) that is built for the step and freed after, in
     one generate call whose finished KV-cache rows take waiting samples;
  2. score: r_i = 1 if the boxed answer verifies, lang(o_i) = language of the first 500 characters; the advantages
     A_i of the chosen --reward variant with alpha(t) (adamame/rewards.py), per prompt group;
  3. log-probs: pi_old recomputed by the trainer (the paper's setting; --old-logprobs sampler keeps the sampler's),
     except for the first mini-batch, whose pi_old is the update's own forward (detached: before any optimizer step
     the two are the same numbers), and the reference pi_ref: the base model with the LoRA adapters switched off
     (no second copy of the weights; with full fine-tuning a frozen copy);
  4. update: --ppo-epochs passes over mini-batches of --mini-batch-prompts prompts, each one optimizer step of the
     clipped surrogate + beta * k3 KL with Dr. GRPO aggregation (adamame/grpo_kernels.py), gradient clipping at 1.0;
  5. log: one metrics.jsonl row (global means over ranks), a few prompt groups to rollouts.jsonl, a checkpoint.

Defaults are the paper's settings where a flag's help says so (the rest: memory knobs, logging, checkpointing). With
no --model/--data it runs the built-in toy demo: the toy task's two SFT stages if not done yet (train_sft.py's
default), the RL prompts the SFT model solves 1 to 7 times of 8 (evaluate.py --select-rl's code), then AdaMame-GRPO,
then a before/after table (adamame/toy.py).
"""

import argparse
import json
import math
import os
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from adamame import checkpoint, dist, memory
from adamame.answer import require_verifier
from adamame.chat import load_tokenizer
from adamame.cli import HelpFormatter, auto_or_positive, check_flags, run_trainer
from adamame.data import DataError, balanced_batches, read_questions
from adamame.hf import load_model, read_config, resolve
from adamame.grpo_kernels import (aggregate, grpo_terms, grpo_terms_from_hidden, token_logprobs,
                                  token_logprobs_from_hidden)
from adamame.language import TRAIN_LANGUAGES, get_detector, reward_languages
from adamame.lora import adapters_disabled, apply_lora
from adamame.memory import grpo_plan
from adamame.report import Reporter, require_reporter
from adamame.rewards import VARIANTS, group_advantages, shaped_scores, variant_alpha
from adamame.rollout import encode_questions, rollouts, score
from adamame.toy import GRPO_SETTINGS, build_toy, demo_report, select_rl_prompts


# -------------------------------------------------------------------------------------------------- the run's state

@dataclass
class Run:
    """What a GRPO run holds from its setup to its end (one per rank)."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    rollout_rows: int  # the memory plan's settings: the rollout's KV cache in full-length rows,
    logits_chunk: int | None  # and the log-prob path (None: full logits; else tokens per lm_head chunk)
    tok: object  # the tokenizer
    questions: list  # every RL prompt (adamame.data.Question), and their token ids
    prompt_ids: list
    val: tuple | None  # this rank's validation (questions, prompt ids), or None
    detector: object  # lang(o_i)'s identifier
    model: torch.nn.Module  # the policy (FSDP2; LoRA adapters when --lora-rank > 0)
    ref_model: torch.nn.Module | None  # full fine-tuning with beta > 0: a frozen copy; LoRA: adapters switched off
    optimizer: torch.optim.Optimizer
    params: list  # the trainable parameters
    T: int  # total RL steps
    steps_per_epoch: int
    paths: dict  # checkpoint, metrics, rollouts
    toy: bool
    order: dict = field(default_factory=dict)  # {epoch: that epoch's balanced batches}


@dataclass
class Batch:
    """One RL step on this rank: its prompts, then what each phase adds."""
    step: int
    qs: list  # this rank's prompts of the step (a prompt's whole group stays on one rank)
    ids: list  # their token ids
    rolls: list = None  # 1. rollout: G samples per prompt, prompt-major
    scores: "Scores" = None  # 2. score
    old_lp: list = None  # 3. log-probs: pi_old per rollout (None: from the update's own forward), pi_ref or None
    ref_lp: list = None


@dataclass
class Scores:
    """Phase 2's results, one entry per rollout (in rollout order)."""
    correct: list  # r_i: 1 if the boxed answer verifies
    langs: list  # lang(o_i)
    qlangs: list  # the query's language
    alpha: float  # the alignment factor the variant used at this step (logged)
    shaped: np.ndarray  # s_i, the variant's shaped score
    adv: np.ndarray  # A_i, s_i normalised within its prompt group


@dataclass
class MicroBatch:
    """One micro-batch of the update: ids, next-token targets and the response mask [b, T] (pack), and per response
    token (flat [N], row-major): the sequence's advantage, pi_old (None: from this forward), pi_ref (None: no KL) and
    the sampler's log-prob (None: not compared here)."""
    rows: list  # rollout indices
    ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    adv: torch.Tensor
    old: torch.Tensor | None
    ref: torch.Tensor | None
    sampled: torch.Tensor | None


def main(argv=None):
    t_main = time.perf_counter()
    args = parse_args(argv)
    check_args(args)
    if args.plan:
        return 0 if plan_only(args).fits else 3
    run = setup(args)
    start = resume_or_start(run)
    reporter = Reporter(args.report_to, args.out, vars(args), run.rank)
    end = min(run.T, args.stop_after) if args.stop_after else run.T
    bar = tqdm(total=run.T, initial=start, desc=f"grpo ({args.reward})", disable=run.rank != 0, dynamic_ncols=True)
    for step in range(start, end):
        with dist.stop_if_a_rank_is_lost(run.rank, step + 1):
            batch = this_ranks_prompts(run, step)
            times = {}
            batch.rolls = timed(times, "rollout", rollout_phase, run, batch)  # 1. G samples per prompt
            batch.scores = timed(times, "scoring", score_phase, run, batch)  # 2. rewards, languages, advantages
            batch.old_lp, batch.ref_lp = timed(times, "logprobs", logprob_phase, run, batch)  # 3. pi_old, pi_ref
            up = timed(times, "update", update_phase, run, batch)  # 4. the PPO update
            row = metrics_row(run, batch, up, times)  # 5. log, validate, checkpoint
            if run.val is not None and ((step + 1) % args.eval_every == 0 or step + 1 == run.T):
                row.update(validation(run))
            write_logs(run, batch, row, reporter)
            bar.update(1)
            bar.set_postfix(acc=f"{row['accuracy']:.2f}", lang=f"{row['lang_match']:.2f}",
                            alpha=f"{row['alignment_factor']:.2f}", kl=f"{row['kl']:.1e}")
            if (step + 1) % args.save_every == 0 or step + 1 == end:
                checkpoint.save_training_state(run.paths["checkpoint"], run.model, run.optimizer, args, step + 1)
    bar.close()
    reporter.close()
    finish(run, end, t_main)
    dist.cleanup()
    return 0


def setup(args) -> Run:
    """Process group, toy demo (if no --model/--data), memory plan, data, validation, identifier, model, optimizer."""
    require_reporter(args.report_to)  # a missing optional package stops here, before any work
    require_verifier(args.verifier)
    get_detector(args.lang_id, TRAIN_LANGUAGES)  # a missing lingua stops here, before any work
    rank, world, device = dist.setup()
    torch.manual_seed(args.seed)
    toy = args.model is None and args.data is None
    if (args.model is None) != (args.data is None):
        raise DataError("give both --model and --data, or neither (to run the built-in toy demo)")
    checkpoint.lock_output(args.out, keep=args.resume or args.overwrite)  # before anything is written there
    model_dir, data_path = (resolve(args.model), args.data) if not toy else prepare_default(args, rank, world, device)
    if args.batch_prompts % world or args.mini_batch_prompts % world or args.batch_prompts % args.mini_batch_prompts:
        raise DataError(f"--batch-prompts {args.batch_prompts} and --mini-batch-prompts {args.mini_batch_prompts} "
                        f"must split evenly over {world} ranks, and the first into whole mini-batches")
    cfg = read_config(model_dir)
    plan = memory.shared_plan(lambda w, dev, total: make_plan(args, cfg, w, dev, total), rank, world, device)
    say = print if rank == 0 else (lambda *a, **k: None)

    tok = load_tokenizer(model_dir)
    questions, prompt_ids, dropped = encode_questions(tok, read_questions(data_path), args.max_prompt_tokens)
    if dropped:
        say(f"dropped {dropped} prompts longer than {args.max_prompt_tokens} tokens")
    steps_per_epoch = len(questions) // args.batch_prompts
    if steps_per_epoch == 0:
        raise DataError(f"{data_path}: {len(questions)} usable prompts, fewer than one batch of {args.batch_prompts}")
    val = None
    if args.val_data and args.eval_every:
        vq, vids, _ = encode_questions(tok, read_questions(args.val_data), args.max_prompt_tokens)
        val = (vq[rank::world], vids[rank::world])
    detector = get_detector(args.lang_id, reward_languages({q.lang for q in questions}))  # lang(o_i)'s
    if set(detector.languages) != set(TRAIN_LANGUAGES):
        say(f"note: the released reward identifies among 14 languages without {' '.join(detector.languages[14:])}; "
            f"this run's training prompts have them, so its identifier adds them (their bonus could not be earned "
            f"otherwise)")

    model = load_model(model_dir)
    ref_model = None
    if args.lora_rank > 0:
        apply_lora(model, args.lora_rank, args.lora_alpha)
    elif args.beta > 0:  # full fine-tuning: the reference needs its own (frozen) copy
        ref_model = dist.shard_model(load_model(model_dir).requires_grad_(False), device)
    dist.shard_model(model, device, plan.activation_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    T = args.max_steps or max(1, math.floor(args.epochs * steps_per_epoch))
    say(f"language identifier: {detector.version} over {' '.join(detector.languages)}; verifier {args.verifier}")
    say(f"{len(questions)} prompts, {world} rank(s), T = {T} steps, reward {args.reward}, "
        f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters")
    paths = {name: os.path.join(args.out, f) for name, f in (("checkpoint", "checkpoint.pt"),
                                                             ("metrics", "metrics.jsonl"),
                                                             ("rollouts", "rollouts.jsonl"))}
    return Run(args=args, rank=rank, world=world, device=device, rollout_rows=plan.rollout_rows,
               logits_chunk=plan.logits_chunk, tok=tok, questions=questions, prompt_ids=prompt_ids, val=val,
               detector=detector, model=model, ref_model=ref_model, optimizer=optimizer, params=params, T=T,
               steps_per_epoch=steps_per_epoch, paths=paths, toy=toy)


def resume_or_start(run) -> int:
    """The first step: from --out/checkpoint.pt with --resume (its logs cut back to it), else 0 with empty logs."""
    os.makedirs(run.args.out, exist_ok=True)
    logs = [run.paths["metrics"], run.paths["rollouts"]]
    if not run.args.resume:
        checkpoint.start_fresh(logs + ([run.paths["checkpoint"], os.path.join(run.args.out, "final")]
                                       if run.args.overwrite else []))
        return 0
    start = checkpoint.resume_training_state(
        run.paths["checkpoint"], run.model, run.optimizer, run.args,
        ("seed", "batch_prompts", "group_size", "reward", "max_steps", "epochs"), logs)
    if run.rank == 0:
        print(f"resumed from {run.paths['checkpoint']} at step {start}")
    return start


def this_ranks_prompts(run, step) -> Batch:
    """The step's batch (balanced over languages, one epoch's order at a time) and this rank's share of it."""
    epoch, idx = divmod(step, run.steps_per_epoch)
    if epoch not in run.order:
        run.order.clear()
        run.order[epoch] = balanced_batches(run.questions, run.args.batch_prompts, run.args.seed, epoch)
    mine = run.order[epoch][idx][run.rank::run.world]
    return Batch(step, [run.questions[i] for i in mine], [run.prompt_ids[i] for i in mine])


# --------------------------------------------------------------------------------------------- the RL step's phases

def rollout_phase(run, batch):
    """Phase 1: G samples per prompt from a plain copy of the current policy (built now, freed after)."""
    args = run.args
    copy = dist.rollout_copy(run.model)
    # One sampling seed per (--seed, step, rank), hashed with each sample's key (adamame/generate.py): distinct for
    # every step and rank while ranks < 1,009 and steps < 991, so no two of a run's samples share their numbers.
    rolls = rollouts(copy, run.tok, batch.ids, n=args.group_size, max_new_tokens=args.max_response_tokens,
                     temperature=args.temperature, seed=args.seed * 1_000_003 + batch.step * 1_009 + run.rank,
                     max_rows=run.rollout_rows, return_logprobs=True)
    del copy
    dist.free_cached_memory(run.device)
    return rolls


def score_phase(run, batch) -> Scores:
    """Phase 2: r_i, lang(o_i), shaped scores s_i and advantages A_i (groups never straddle ranks: local)."""
    args, rolls = run.args, batch.rolls
    score(rolls, batch.qs, args.lang_mode, run.detector, args.verifier)
    correct, langs = [r.correct for r in rolls], [r.lang for r in rolls]
    r_i = [r.correct + float(r.format_ok) for r in rolls] if args.format_reward else correct
    qlangs, gids = [batch.qs[r.question].lang for r in rolls], [r.question for r in rolls]
    shaped = shaped_scores(r_i, langs, qlangs, gids, batch.step, run.T, variant=args.reward, bonus=args.bonus,
                           lam=args.lam, floor=args.alpha_floor)
    return Scores(correct=correct, langs=langs, qlangs=qlangs, shaped=shaped, adv=group_advantages(shaped, gids),
                  alpha=variant_alpha(args.reward, batch.step, run.T, args.alpha_floor))


def logprob_phase(run, batch):
    """Phase 3: pi_ref (adapters off, or the frozen copy) and pi_old (recomputed, or the sampler's)."""
    args, rolls, model = run.args, batch.rolls, run.model
    budget, chunk = args.micro_batch_tokens, run.logits_chunk
    ref_lp = None
    if args.beta > 0:
        if run.ref_model is not None:
            ref_lp = sequence_logprobs(run.ref_model, rolls, run.device, args.temperature, budget, chunk)
        else:
            with adapters_disabled(model):
                ref_lp = sequence_logprobs(model, rolls, run.device, args.temperature, budget, chunk)
    old_lp = [r.logprobs for r in rolls]
    if args.old_logprobs == "recompute":  # the first mini-batch's pi_old comes from its update forward (ppo_update)
        first = min(len(rolls), args.mini_batch_prompts // run.world * args.group_size)
        old_lp = [None] * first + (sequence_logprobs(model, rolls[first:], run.device, args.temperature, budget,
                                                     chunk) if first < len(rolls) else [])
    return old_lp, ref_lp


def update_phase(run, batch):
    """Phase 4: the PPO update. Stops (keeping the last checkpoint) on a non-finite loss."""
    losses, grad_norms, sums, logprob_diff = ppo_update(run, batch)
    if not all(math.isfinite(v) for v in losses):
        raise checkpoint.TrainingStopped(f"step {batch.step + 1}: loss is {losses}; stopping without saving "
                                         f"(last good checkpoint: {run.paths['checkpoint']})")
    dist.free_cached_memory(run.device)
    return {"losses": losses, "grad_norms": grad_norms, "sums": sums, "logprob_diff": logprob_diff}


def ppo_update(run, batch):
    """--ppo-epochs passes over mini-batches of whole prompt groups (rollouts are prompt-major, G per prompt), one
    optimizer step each. A mini-batch is cut into length-sorted micro-batches whose losses use the whole mini-batch's
    counts over all ranks and are scaled by W (FSDP averages gradients): the update is exactly that of one process
    holding every rollout. A micro-batch whose pi_old is None (the first mini-batch's, when pi_old is recomputed)
    takes it from its own forward, detached (the ratio is then exactly 1, with the same gradient), and it is written
    back into batch.old_lp. Returns (loss per update, grad norm per update, summed stats, max |pi_old - sampler's|
    where the trainer's pi_old is known: every rollout when recomputed, else the first mini-batch's)."""
    args, W, device = run.args, run.world, run.device
    run.model.train()
    G, per_rank, P = args.group_size, args.mini_batch_prompts // W, len(batch.qs)
    minis = [list(range(p * G, min(p + per_rank, P) * G)) for p in range(0, P, per_rank)]
    sums = {k: torch.zeros((), device=device) for k in ("clip_frac", "kl", "ratio")}  # on the device: no sync
    losses, grad_norms, gap = [], [], torch.zeros((), device=device)
    for epoch in range(args.ppo_epochs):
        for m, mini in enumerate(minis):
            counts = dict(num_seqs=dist.all_sum(len(mini), device),
                          num_tokens=dist.all_sum(sum(len(batch.rolls[j].tokens) for j in mini), device))
            mbs = dist.micro_batches(mini, args.micro_batch_tokens, lambda j: _length(batch.rolls[j]), device)
            mini_loss, own = torch.zeros((), device=device), []
            for k, rows in enumerate(mbs):
                run.model.set_requires_gradient_sync(k == len(mbs) - 1)
                known = epoch == 0 and (m == 0 or args.old_logprobs == "recompute")  # the trainer's pi_old
                mb = micro_batch(batch, rows, device, sampled=known)
                loss, stats, logp = micro_batch_loss(run, mb, counts)
                (loss * W).backward()
                mini_loss += loss.detach()
                sums = {key: v + stats[key] for key, v in sums.items()}
                if mb.old is None:
                    own.append((rows, logp))
                if known and logp.numel():
                    trainer = logp if m == 0 else mb.old  # before any step, this forward is pi_old
                    gap = torch.maximum(gap, (trainer - mb.sampled).abs().max())  # the sampler against it
            _write_back(batch, own)  # after the backward: one copy to the host per micro-batch, no stall before it
            losses.append(dist.all_sum(mini_loss.item(), device))
            if not math.isfinite(losses[-1]):
                return losses, grad_norms, {k: v.item() for k, v in sums.items()}, gap.item()
            gn = torch.nn.utils.clip_grad_norm_(run.params, args.grad_clip)
            grad_norms.append(float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    return losses, grad_norms, {k: v.item() for k, v in sums.items()}, gap.item()


def micro_batch(batch, rows, device, *, sampled: bool) -> MicroBatch:
    def flat(per_rollout):  # per-rollout lists of per-token values -> [N] in mask's order, made on the host
        return torch.tensor([x for j in rows for x in per_rollout(j)], dtype=torch.float32, device=device)
    adv = flat(lambda j: [batch.scores.adv[j]] * len(batch.rolls[j].tokens))
    old = None if batch.old_lp[rows[0]] is None else flat(lambda j: batch.old_lp[j])
    ref = None if batch.ref_lp is None else flat(lambda j: batch.ref_lp[j])
    lp = flat(lambda j: batch.rolls[j].logprobs) if sampled else None
    return MicroBatch(rows, *pack([batch.rolls[j] for j in rows], device), adv, old, ref, lp)


def micro_batch_loss(run, mb: MicroBatch, counts: dict):
    """The micro-batch's part of its mini-batch's loss (counts: the mini-batch's sequences and tokens over all ranks,
    so the parts add up to the whole), its statistics, and log pi at its response tokens (detached)."""
    a = run.args
    terms = response_terms(run.model, mb.ids, mb.targets, mb.mask, run.logits_chunk, advantages=mb.adv,
                           old_logprobs=mb.old, ref_logprobs=mb.ref, temperature=a.temperature, clip_eps=a.clip_eps,
                           clip_eps_high=a.clip_eps_high)

    def full(v):  # [N] at the response positions -> [b, T], 0 elsewhere
        return None if v is None else torch.zeros(mb.mask.shape, dtype=v.dtype, device=v.device).masked_scatter(
            mb.mask, v)
    loss, stats = aggregate(*map(full, terms), mb.mask, old_logprobs=full(mb.old), beta=a.beta,
                            aggregation=a.aggregation, max_tokens=a.max_response_tokens, **counts)
    return loss, stats, terms[0].detach()


def metrics_row(run, batch, up, times):
    """Phase 5a: one metrics.jsonl row, global means over every rank's rollouts."""
    rolls, sc, device = batch.rolls, batch.scores, run.device
    correct, langs, qlangs = sc.correct, sc.langs, sc.qlangs
    languages = sorted({q.lang for q in run.questions})
    per_group = {}
    for r, c in zip(rolls, correct):
        per_group.setdefault(r.question, []).append(c)
    local = {"n": len(rolls), "groups": len(per_group), "reward": float(sc.shaped.sum()), "accuracy": sum(correct),
             "mixed": sum(0 < sum(cs) < len(cs) for cs in per_group.values()),  # groups with a GRPO gradient
             "lang_match": sum(lg == q for lg, q in zip(langs, qlangs)), "adv_abs": float(abs(sc.adv).sum()),
             "response_tokens": sum(len(r.tokens) for r in rolls),
             "verify_timeouts": sum(r.verify_timed_out for r in rolls)}
    by_lang = {lang: {"n": sum(q == lang for q in qlangs),
                      "accuracy": sum(c for c, q in zip(correct, qlangs) if q == lang),
                      "lang_match": sum(lg == q for lg, q in zip(langs, qlangs) if q == lang)} for lang in languages}
    keys = list(local) + [(lang, k) for lang in languages for k in ("n", "accuracy", "lang_match")]
    values = list(local.values()) + [by_lang[lang][k] for lang in languages for k in ("n", "accuracy", "lang_match")]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)  # one collective for every count
    tot = dict(zip(keys, t.tolist()))
    extra = torch.tensor([up["logprob_diff"]] + [up["sums"][k] for k in ("clip_frac", "kl", "ratio")],
                         dtype=torch.float64, device=device)
    torch.distributed.all_reduce(extra[:1], op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(extra[1:])
    n_updates = len(up["losses"])
    clip_frac, kl, ratio = (extra[1:] / n_updates).tolist()
    n = tot["n"]
    return {"step": batch.step + 1, "reward": tot["reward"] / n, "accuracy": tot["accuracy"] / n,
            "lang_match": tot["lang_match"] / n, "mixed_groups": tot["mixed"] / tot["groups"],
            "alignment_factor": sc.alpha, "adv_abs_mean": tot["adv_abs"] / n,
            "loss": sum(up["losses"]) / n_updates, "losses": up["losses"], "grad_norm": max(up["grad_norms"]),
            "kl": kl, "clip_frac": clip_frac, "ratio": ratio, "logprob_diff": extra[0].item(),
            "response_tokens": tot["response_tokens"] / n, "verify_timeouts": int(tot["verify_timeouts"]),
            "lang_match_by_lang": {lg: tot[(lg, "lang_match")] / max(1, tot[(lg, "n")]) for lg in languages},
            "accuracy_by_lang": {lg: tot[(lg, "accuracy")] / max(1, tot[(lg, "n")]) for lg in languages},
            **{f"time_{k}": v for k, v in times.items()}, "time": sum(times.values()),
            "rollout_tokens_per_s": tot["response_tokens"] / max(times["rollout"], 1e-9)}


def validation(run):
    """Greedy validation (one sample per prompt) of the current policy: accuracy and query-language match."""
    qs, ids = run.val
    copy = dist.rollout_copy(run.model)
    rs = score(rollouts(copy, run.tok, ids, n=1, max_new_tokens=run.args.max_response_tokens, temperature=0.0,
                        max_rows=run.rollout_rows), qs, run.args.lang_mode,
               run.detector, run.args.verifier)
    del copy
    dist.free_cached_memory(run.device)
    acc = dist.all_sum(sum(r.correct for r in rs), run.device)
    match = dist.all_sum(sum(r.lang == qs[r.question].lang for r in rs), run.device)
    n = dist.all_sum(len(rs), run.device)
    return {"val_accuracy": acc / n, "val_lang_match": match / n}


def write_logs(run, batch, row, reporter):
    """Phase 5b: the metrics row, and the first --log-rollouts prompt groups of every rank with their scores."""
    n_log, qs, sc = max(0, run.args.log_rollouts // run.world), batch.qs, batch.scores
    mine = [{"step": batch.step + 1, "rank": run.rank, "id": qs[r.question].id, "group": f"{run.rank}:{r.question}",
             "query_lang": qs[r.question].lang, "answer": qs[r.question].answer, "response": r.text,
             "tokens": len(r.tokens), "finish_reason": r.finish_reason, "correct": r.correct, "lang": r.lang,
             "score": float(sc.shaped[i]), "advantage": float(sc.adv[i]), "alignment_factor": sc.alpha,
             "total_steps": run.T, "logprob_sum": float(sum(batch.old_lp[i]))}
            for i, r in enumerate(batch.rolls) if r.question < n_log]
    logged = [None] * run.world
    torch.distributed.all_gather_object(logged, mine)
    if run.rank == 0:
        with open(run.paths["metrics"], "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        reporter.log(row)
        with open(run.paths["rollouts"], "a", encoding="utf-8", errors="replace") as f:
            for rows in logged:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")


def finish(run, end, t_main):
    """The export (and the toy demo's report) once the last step ran, then the run's summary line."""
    if end == run.T:
        checkpoint.export_hf(run.model, run.tok, os.path.join(run.args.out, "final"), run.args.export_lora_scale)
        if run.rank == 0:
            print(f"exported {os.path.join(run.args.out, 'final')}")
        if run.toy:
            demo_report(run.args, run.rank, run.world, run.device, t_main)
    if run.rank == 0 and os.path.exists(run.paths["metrics"]):
        rows = [json.loads(r) for r in open(run.paths["metrics"], encoding="utf-8")]
        if rows:
            a, b = rows[0], rows[-1]
            print(f"steps 1-{b['step']}: accuracy {a['accuracy']:.3f} -> {b['accuracy']:.3f}, query-language match "
                  f"{a['lang_match']:.3f} -> {b['lang_match']:.3f}; metrics in {run.paths['metrics']}")


# ---------------------------------------------------------------------------------------------------------- helpers

def timed(times, name, phase, *args):
    """phase(*args), with its wall time in times[name]."""
    t0 = time.perf_counter()
    out = phase(*args)
    times[name] = time.perf_counter() - t0
    return out


def pack(rolls, device):
    """Right-padded ids [b, T], next-token targets [b, T] (position k predicts token k + 1) and the response mask
    [b, T] (True where that next token is a response token: row i's tokens in order, so a flat [N] of per-token values
    in rollout order lines up with mask's True entries)."""
    T = max(len(r.prompt_ids) + len(r.tokens) for r in rolls)
    ids = torch.zeros(len(rolls), T, dtype=torch.long)
    mask = torch.zeros(len(rolls), T, dtype=torch.bool)
    for i, r in enumerate(rolls):
        p, n = len(r.prompt_ids), len(r.tokens)
        ids[i, :p + n] = torch.tensor(r.prompt_ids + r.tokens)
        mask[i, p - 1:p - 1 + n] = True
    targets = torch.cat([ids[:, 1:], torch.zeros(len(rolls), 1, dtype=torch.long)], 1)
    return ids.to(device), targets.to(device), mask.to(device)


def response_logprobs(model, ids, targets, mask, temperature, chunk=None):
    """log pi(token) at the response positions (`mask` True), float32 [N] in row-major order. Logits exist only for
    those N positions; with `chunk` (the memory plan's choice when even those would not fit) only `chunk` at a time."""
    if chunk is None:
        return token_logprobs(model(ids, logits_at=mask), targets[mask], temperature)
    return model(ids, logits_at=mask,  # inside the forward, where FSDP holds the lm_head weight gathered
                 head=lambda hidden, weight: token_logprobs_from_hidden(hidden, weight, targets[mask], temperature,
                                                                        chunk))


def response_terms(model, ids, targets, mask, chunk=None, **kw):
    """The loss's per-token terms (log pi, surrogate, k3, clip flag) at the response positions, flat [N] each, from one
    fused pass over their logits (adamame/grpo_kernels.py's grpo_terms; kw: its per-token inputs, flat [N])."""
    t = targets[mask]
    keep = torch.ones_like(t, dtype=torch.bool)
    if chunk is None:
        return grpo_terms(model(ids, logits_at=mask), t, mask=keep, **kw)
    return model(ids, logits_at=mask, head=lambda hidden, weight: grpo_terms_from_hidden(
        hidden, weight, t, mask=keep, chunk_tokens=chunk, **kw))


@torch.no_grad()
def sequence_logprobs(model, rolls, device, temperature, budget, chunk=None):
    """log pi(o_ik) for every response token of every rollout, as lists in rollout order (micro-batched, no grad)."""
    out = [None] * len(rolls)
    model.eval()
    for mb in dist.micro_batches(list(range(len(rolls))), budget, lambda j: _length(rolls[j]), device):
        ids, targets, mask = pack([rolls[j] for j in mb], device)
        lp = response_logprobs(model, ids, targets, mask, temperature, chunk).tolist()
        for j in mb:
            n = len(rolls[j].tokens)
            out[j], lp = lp[:n], lp[n:]
    return out


def _length(roll) -> int:
    return len(roll.prompt_ids) + len(roll.tokens)


def _write_back(batch, own):
    """pi_old taken from the update's own forward, into batch.old_lp (lists per rollout, as the other entries)."""
    for rows, lp in own:
        lp = lp.tolist()
        for j in rows:
            n = len(batch.rolls[j].tokens)
            batch.old_lp[j], lp = lp[:n], lp[n:]


# --------------------------------------------------------------------------------- the toy demo and the memory plan

def prepare_default(args, rank, world, device):
    """The toy demo: its two SFT stages if not done yet (train_sft.py's default), then RL on toy prompts."""
    if rank == 0:
        print("toy demo settings: " + ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in GRPO_SETTINGS))
    paths = build_toy(args.out, rank)
    sft_dir = os.path.join(args.out, "sft")
    if not os.path.exists(os.path.join(sft_dir, "final", "config.json")):
        import train_sft  # the toy demo's SFT stages, in these processes (an entry script: only when they run)

        torch.distributed.barrier()
        steps = ["--max-steps", str(args.sft_steps)] if args.sft_steps else []
        train_sft.main(["--out", sft_dir, "--seed", str(args.seed), "--overwrite", *steps], keep_process_group=True)
    if not os.path.exists(paths["train"]):  # the RL data stage: the pool's questions the SFT model solves 1-7 of 8
        select_rl_prompts(os.path.join(sft_dir, "final"), paths["pool"], paths["train"], rank=rank, world=world,
                          device=device, max_new_tokens=args.max_response_tokens, seed=args.seed,
                          min_rows=args.batch_prompts)
    args.val_data = args.val_data or paths["test"]
    return os.path.join(sft_dir, "final"), paths["train"]


def make_plan(args, cfg, world, device_type, total):
    return grpo_plan(cfg, world=world, total=total, device=device_type, prompts_per_step=args.batch_prompts,
                     group_size=args.group_size, max_prompt_tokens=args.max_prompt_tokens,
                     max_response_tokens=args.max_response_tokens, micro_batch_tokens=args.micro_batch_tokens,
                     lora_rank=args.lora_rank, beta=args.beta, rollout_rows=args.rollout_rows,
                     activation_checkpointing=args.activation_checkpointing)


def plan_only(args):
    """--plan: the plan from config.json alone (no process group, no weights, no tokenizer), then exit 0 or 3."""
    if not args.model:
        raise DataError("--plan needs --model (a folder with config.json)")
    device, world, total = memory.plan_target(args.nproc_per_node, args.gpu_memory_gib)
    plan = make_plan(args, read_config(resolve(args.model)), world, device, total)
    print(f"memory plan for {args.model} on {world} {'GPU(s)' if device == 'cuda' else 'process(es)'}")
    print(plan)
    return plan


# ------------------------------------------------------------------------------------------------- the command line

def parse_args(argv=None):

    toy = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in GRPO_SETTINGS.items())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=textwrap.fill(
        f"The toy demo (no --model/--data) uses its own settings wherever the command line gives none: {toy}; it "
        f"prints them when it starts.", 116))
    ap.add_argument("--model", help="the SFT model: a folder (HF format) or hub id; default: the toy demo under --out")
    ap.add_argument("--data", help="RL prompts, JSON Lines with id, lang, prompt, answer")
    ap.add_argument("--val-data", help="validation prompts (same format), evaluated greedily every --eval-every steps")
    ap.add_argument("--out", default="runs/grpo", help="checkpoints, metrics.jsonl, rollouts.jsonl, final/")
    ap.add_argument("--epochs", type=float, default=10,
                    help="passes over the prompts; the paper's 10 over its 4,608 prompts gives T = 90 steps")
    ap.add_argument("--max-steps", type=int, help="RL steps T; overrides --epochs")
    ap.add_argument("--stop-after", type=int, help="exit after this step, keeping T (continue with --resume)")
    ap.add_argument("--reward", choices=VARIANTS, default="adamame",
                    help="advantage variant: adamame (the paper's method) or a baseline / ablation")
    ap.add_argument("--bonus", type=float, default=2.0, help="B, the language bonus of adamame (the paper's)")
    ap.add_argument("--lam", type=float, default=1.0, help="lambda of binary-lang (not given in the paper)")
    ap.add_argument("--alpha-floor", type=float, default=0.1, help="floor of the alignment factor (the paper's)")
    ap.add_argument("--verifier", choices=("builtin", "math-verify"), default="builtin",
                    help="answer checker: builtin (safe, reads multilingual numbers) or math-verify (the paper's; "
                         "optional: pip install math-verify)")
    ap.add_argument("--lang-mode", choices=("prefix", "trace"), default="prefix",
                    help="what lang(o_i) reads: the first 500 characters (the paper's) or the whole trace")
    ap.add_argument("--lang-id", choices=("langid", "lingua"), default="langid",
                    help="language identifier for lang(o_i), over the released reward's 14 languages (and any "
                         "language of the prompts they lack): langid or lingua (the paper's; pip install "
                         "lingua-language-detector)")
    ap.add_argument("--format-reward", action="store_true",
                    help="r_i + 1 for a <think> block then \\boxed{} (the released code's reward; not in the paper)")
    ap.add_argument("--group-size", type=int, default=8, help="rollouts per prompt G (the paper's)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (the paper's)")
    ap.add_argument("--batch-prompts", type=int, default=512, help="prompts per RL step (the paper's)")
    ap.add_argument("--mini-batch-prompts", type=int, default=256, help="prompts per optimizer step (the paper's)")
    ap.add_argument("--ppo-epochs", type=int, default=1, help="passes over each step's rollouts (the paper's)")
    ap.add_argument("--lr", type=float, default=1e-5, help="constant learning rate (the paper's)")
    ap.add_argument("--weight-decay", type=float, default=0.01,
                    help="AdamW weight decay (the released trainer's, AdamW's default; 0 turns it off)")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (the paper's)")
    ap.add_argument("--beta", type=float, default=0.001, help="k3 KL coefficient (the paper's)")
    ap.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip epsilon (the paper's)")
    ap.add_argument("--clip-eps-high", type=float, help="upper clip epsilon (default: --clip-eps)")
    ap.add_argument("--aggregation", choices=("dr_grpo", "token_mean", "seq_mean"), default="dr_grpo",
                    help="policy-loss aggregation (the paper's dr_grpo: normaliser --max-response-tokens)")
    ap.add_argument("--lora-rank", type=int, default=32, help="LoRA rank, 0 = full fine-tuning (the paper's 32)")
    ap.add_argument("--lora-alpha", type=float, default=64, help="LoRA alpha (the paper's)")
    ap.add_argument("--export-lora-scale", type=float,
                    help="scale of the LoRA update merged into final/ (default: the training scale alpha / r; 1.0 "
                         "reproduces the released models, whose merge never got --lora_alpha)")
    ap.add_argument("--max-prompt-tokens", type=int, default=512, help="longer prompts are dropped (the paper's)")
    ap.add_argument("--max-response-tokens", type=int, default=4096, help="rollout length limit (the paper's)")
    ap.add_argument("--old-logprobs", choices=("recompute", "sampler"), default="recompute",
                    help="pi_old: recomputed by the trainer before the update (the paper's) or the sampler's")
    ap.add_argument("--micro-batch-tokens", type=int, default=32768,
                    help="padded tokens per forward/backward on each rank (a memory knob)")
    ap.add_argument("--rollout-rows", type=auto_or_positive, default="auto",
                    help="the rollout's paged KV cache in full-length rows (as many samples decode at once as its "
                         "blocks hold): auto (the memory plan's choice) or a number (a cap)")
    ap.add_argument("--activation-checkpointing", choices=("auto", "on", "off"), default="auto",
                    help="recompute layer activations in backward: auto is on when the plan needs it")
    ap.add_argument("--plan", action="store_true",
                    help="print the memory plan from --model's config.json and exit (0: fits, 3: does not fit)")
    ap.add_argument("--nproc-per-node", type=int, help="with --plan: ranks (default: the GPUs visible, else 1)")
    ap.add_argument("--gpu-memory-gib", type=float,
                    help="with --plan: GiB per GPU (default: this machine's GPU; without a GPU, its RAM)")
    ap.add_argument("--eval-every", type=int, default=10,
                    help="greedy validation every K steps (with --val-data; 0: none)")
    ap.add_argument("--save-every", type=int, default=10, help="checkpoint every K steps")
    ap.add_argument("--log-rollouts", type=int, default=8, help="prompt groups per step written to rollouts.jsonl")
    ap.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run in --out (without it or --resume, a run there stops at once)")
    ap.add_argument("--report-to", choices=("none", "tensorboard", "wandb"), default="none",
                    help="also send every metrics.jsonl scalar to TensorBoard (--out/tensorboard) or Weights & Biases "
                         "(optional packages)")
    ap.add_argument("--sft-steps", type=int, help="toy demo only: steps of each of its two SFT stages (default: "
                                                   "train_sft.py's toy settings)")
    ap.add_argument("--seed", type=int, default=0, help="seed of sampling, LoRA initialisation and data order")
    args = ap.parse_args(argv)
    if args.model is None and args.data is None:  # the toy demo: its own settings where the command line gives none
        ap.set_defaults(**GRPO_SETTINGS)
        args = ap.parse_args(argv)
    return args


def check_args(args):
    check_flags(args, positive=("epochs", "max_steps", "stop_after", "group_size", "temperature", "batch_prompts",
                                "mini_batch_prompts", "ppo_epochs", "lr", "grad_clip", "clip_eps", "clip_eps_high",
                                "lora_alpha", "max_prompt_tokens", "max_response_tokens", "micro_batch_tokens",
                                "nproc_per_node", "gpu_memory_gib", "save_every", "sft_steps"),
                non_negative=("bonus", "lam", "weight_decay", "beta", "lora_rank", "export_lora_scale", "eval_every",
                              "log_rollouts"),
                fractions={"alpha_floor": (0, 1)})


if __name__ == "__main__":
    run_trainer(main, lambda: parse_args().out)
