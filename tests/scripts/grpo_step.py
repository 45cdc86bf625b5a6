"""One PPO update of train_grpo.ppo_update on fixed synthetic rollouts; run as 1 process or under torchrun.

Writes {"losses", "grad_norms", "weights"} (rank 0) to the JSON path given as the first argument. With plain SGD
(lr 1) and no clipping, the weight change is exactly minus the gradient, so equal weights mean equal gradients.
Usage: grpo_step.py OUT MODEL_DIR [MICRO_BATCH_TOKENS [LOGITS_CHUNK]] [--old fixed|recompute|own] (defaults 20
tokens, full logits, fixed pi_old far from pi). recompute: pi_old by a separate no-grad pass over every rollout (the
trainer before it took the first mini-batch's from its update forward); own: that, as train_grpo does it now.
"""

import json
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from adamame import dist  # noqa: E402
from adamame.lora import adapters_disabled, apply_lora  # noqa: E402
from adamame.hf import load_model  # noqa: E402
from adamame.rollout import Rollout  # noqa: E402
from train_grpo import logprob_phase, ppo_update, sequence_logprobs  # noqa: E402


def main(out_path, model_dir, budget=20, chunk=None, old_mode="fixed"):
    rank, world, device = dist.setup()
    torch.manual_seed(0)
    model = load_model(model_dir)
    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # a trained adapter, so policy != reference and the KL term has a gradient
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.05)
    dist.shard_model(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1.0)
    P, G = 4, 4
    g = torch.Generator().manual_seed(1)
    all_rolls, adv = [], []
    for q in range(P):
        prompt = torch.randint(1, 300, (3 + q,), generator=g).tolist()
        for _ in range(G):
            toks = torch.randint(1, 300, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            old = (-4 - torch.rand(len(toks), generator=g)).tolist()  # ratios far from 1: clipping is exercised
            all_rolls.append((q, prompt, toks, old))
            adv.append(float(torch.randn(1, generator=g)))
    mine_q = list(range(P))[rank::world]
    rolls = [Rollout(mine_q.index(q), p, t, "", "length", o) for q, p, t, o in all_rolls if q in mine_q]
    my_adv = torch.tensor([a for (q, *_), a in zip(all_rolls, adv) if q in mine_q]).numpy()
    args = SimpleNamespace(group_size=G, mini_batch_prompts=2, ppo_epochs=2, micro_batch_tokens=budget,
                           temperature=0.9, clip_eps=0.2, clip_eps_high=0.28, beta=0.05, aggregation="dr_grpo",
                           max_response_tokens=8, grad_clip=1e9,
                           old_logprobs="sampler" if old_mode == "sampler" else "recompute")
    with adapters_disabled(model):
        ref = sequence_logprobs(model, rolls, device, args.temperature, args.micro_batch_tokens, chunk)
    old = [r.logprobs for r in rolls]
    if old_mode == "recompute":
        old = sequence_logprobs(model, rolls, device, args.temperature, args.micro_batch_tokens, chunk)
    run = SimpleNamespace(model=model, ref_model=None, optimizer=opt, params=params, args=args, world=world,
                          device=device, logits_chunk=chunk)  # what train_grpo.Run holds
    batch = SimpleNamespace(qs=mine_q, rolls=rolls, scores=SimpleNamespace(adv=my_adv), old_lp=old, ref_lp=ref)
    if old_mode == "own":  # train_grpo's phase: the first mini-batch's pi_old comes from its update forward
        batch.old_lp, _ = logprob_phase(run, batch)
        assert batch.old_lp[0] is None and batch.old_lp[-1] is not None
    first = args.mini_batch_prompts // world * G  # this rank's rollouts in the first mini-batch
    before = sequence_logprobs(model, rolls[:first], device, args.temperature, args.micro_batch_tokens, chunk)
    losses, norms, _, gap = ppo_update(run, batch)
    old = batch.old_lp
    assert None not in old  # written back by ppo_update, for logprob_diff and the rollout records
    # logprob_diff (this rank's part): max |pi_old - sampler's| where the trainer's pi_old is known: every rollout
    # when it is recomputed (its pi_old, as written back), else the first mini-batch's (the policy before any step)
    trainer = old if old_mode != "fixed" else before
    want = max(abs(a - b) for o, r in zip(trainer, rolls) for a, b in zip(o, r.logprobs))
    assert abs(gap - want) <= 1e-5 * max(1.0, want), (gap, want)
    full = dist.full_state_dict(model, trainable_only=True)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"losses": losses, "grad_norms": norms, "old": [x for o in old for x in o],
                       "weights": {k: v.flatten().tolist() for k, v in full.items()}}, f)
    dist.cleanup()


if __name__ == "__main__":
    argv = sys.argv[1:]
    mode = argv.pop(argv.index("--old") + 1) if "--old" in argv else "fixed"
    argv = [a for a in argv if a != "--old"]
    main(argv[0], argv[1], *(int(a) for a in argv[2:]), old_mode=mode)
