"""A trivially learnable reward: 1 when the first generated token is below 100 (about a third of a random model's
samples). GRPO (plain variant) with the project's rollout engine, advantages and ppo_update; prints the mean
reward of each step as JSON. Usage: grpo_learn.py MODEL_DIR LR STEPS
"""

import json
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from adamame import dist  # noqa: E402
from adamame.generate import generate  # noqa: E402
from adamame.hf import load_model  # noqa: E402
from adamame.rewards import advantages  # noqa: E402
from adamame.rollout import Rollout  # noqa: E402
from train_grpo import ppo_update  # noqa: E402


def main(model_dir, lr, steps):
    rank, world, device = dist.setup()
    torch.manual_seed(0)
    model = load_model(model_dir)
    dist.shard_model(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    P, G = 8, 8
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 97, (5,), generator=g).tolist() for _ in range(P)]
    args = SimpleNamespace(group_size=G, mini_batch_prompts=P, ppo_epochs=1, micro_batch_tokens=4096,
                           temperature=1.0, clip_eps=0.2, clip_eps_high=None, beta=0.0, aggregation="dr_grpo",
                           max_response_tokens=4, grad_clip=1.0, old_logprobs="sampler")
    rewards = []
    for step in range(steps):
        samples = generate(dist.rollout_copy(model), prompts, max_new_tokens=4, n=G, temperature=1.0, seed=step,
                           return_logprobs=True)
        rolls = [Rollout(i // G, prompts[i // G], s.tokens, "", s.finish_reason, s.logprobs)
                 for i, s in enumerate(samples)]
        correct = [float(r.tokens[0] < 100) for r in rolls]
        rewards.append(sum(correct) / len(correct))
        adv = advantages(correct, ["en"] * len(rolls), ["en"] * len(rolls), [r.question for r in rolls], step,
                         steps, variant="grpo")
        run = SimpleNamespace(model=model, optimizer=opt, params=params, args=args, world=world, device=device,
                              logits_chunk=None)  # what train_grpo.Run holds
        ppo_update(run, SimpleNamespace(qs=prompts, rolls=rolls, scores=SimpleNamespace(adv=adv),
                                        old_lp=[r.logprobs for r in rolls], ref_lp=None))
    print(json.dumps(rewards))
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
