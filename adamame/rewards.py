"""AdaMame rewards: the scheduled alignment factor, the shaped scores of every variant, group-relative advantages.

Why: this is the paper's contribution. A correct rollout whose reasoning is in the query language earns a bonus
that grows over training, so the policy first explores whichever language solves the problem, then aligns.
For prompt q with query language l_q and rollouts o_1..o_G (t = RL step, T = total RL steps):

    alpha(t) = max( 1/2 * (1 - cos(pi * t / T)), floor )                 floor = 0.1
    r_i      = 1 if the final answer of o_i verifies against the gold answer, else 0   (train_grpo --format-reward:
               + 1 for the released reward's <think>/\\boxed format, as its code does)
    s_i      = r_i * (1 + B * alpha(t) * 1[lang(o_i) = l_q])               B = 2.0        ("adamame")
    A_i      = (s_i - mean_j s_j) / (std_j s_j + eps)                      unbiased std, eps = 1e-6

Variants (baselines and ablations):
    grpo               s_i = r_i
    binary-lang        s_i = r_i + lam * 1[lang(o_i) = l_q]
    adamame-const      alpha(t) = 1
    adamame-diversity  s_i = r_i * (1 + B alpha(t) 1[...]) * w_i,
                       w_i = 1 + (G / n_i - 1) * 1/2 * (1 + cos(pi t / T)),  n_i = #rollouts in the group with lang(o_i)

A group of one gets A = s; a group whose scores are all equal gets A = 0. "unknown" never matches l_q.
Note: in an all-correct group, dividing by the std makes A independent of B and alpha(t); B and the schedule
matter only in groups of mixed correctness.

In another trainer this file alone (numpy is its only import) gives the recipe for a batch of rollouts grouped by
prompt, with the paper's B = 2 and floor 0.1 by default; r_i comes from your verifier (or adamame/answer.py) and
lang(o_i) from your identifier (or adamame/language.py's `reward_language`). Where the trainer takes advantages (a
verl advantage estimator), `advantages`; where it takes rewards and normalises each group itself (TRL's GRPOTrainer
reward functions), `shaped_scores`, the s_i it then normalises:

    from rewards import advantages, shaped_scores
    kw = dict(correct=[1, 1, 0, 1], langs=["th", "en", "th", "en"], query_langs=["th"] * 4, group_ids=[7, 7, 7, 7],
              step=t, total_steps=T)
    adv = advantages(**kw)        # A_i, one float per rollout, in input order
    s = shaped_scores(**kw)       # s_i, for a trainer that normalises them itself

Imports: numpy.
"""

import math

import numpy as np

VARIANTS = ("grpo", "binary-lang", "adamame", "adamame-const", "adamame-diversity")


def alignment_factor(step: int, total_steps: int, floor: float = 0.1) -> float:
    """alpha(t) = max(1/2 (1 - cos(pi t / T)), floor), with t clamped to [0, T]."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    t = min(max(step, 0), total_steps)
    return max(0.5 * (1.0 - math.cos(math.pi * t / total_steps)), floor)


def variant_alpha(variant: str, step: int, total_steps: int, floor: float = 0.1) -> float:
    """The factor a variant scales its language bonus by at `step`: alpha(t) for adamame and adamame-diversity, 1 for
    adamame-const, 0 for the variants without the scheduled bonus (grpo, binary-lang)."""
    if variant in ("adamame", "adamame-diversity"):
        return alignment_factor(step, total_steps, floor)
    return 1.0 if variant == "adamame-const" else 0.0


def _diversity_decay(step: int, total_steps: int) -> float:
    t = min(max(step, 0), total_steps)
    return 0.5 * (1.0 + math.cos(math.pi * t / total_steps))


def shaped_scores(correct, langs, query_langs, group_ids, step, total_steps, *, variant="adamame", bonus=2.0,
                  lam=1.0, floor=0.1) -> np.ndarray:
    """s_i for every rollout (float64 [N]), in input order. See the module docstring for each variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r} (choose from {', '.join(VARIANTS)})")
    n = len(correct)
    if not (len(langs) == len(query_langs) == len(group_ids) == n):
        raise ValueError("correct, langs, query_langs and group_ids must have the same length")
    r = np.asarray(correct, dtype=np.float64)
    match = np.array([lg == q and lg != "unknown" for lg, q in zip(langs, query_langs)], dtype=np.float64)
    if variant == "grpo":
        return r
    if variant == "binary-lang":
        return r + lam * match
    s = r * (1.0 + bonus * variant_alpha(variant, step, total_steps, floor) * match)
    if variant == "adamame-diversity":
        decay = _diversity_decay(step, total_steps)
        groups = {}
        for i, g in enumerate(group_ids):
            groups.setdefault(g, []).append(i)
        for idx in groups.values():
            size = len(idx)
            for i in idx:
                n_same = sum(1 for j in idx if langs[j] == langs[i])
                s[i] *= 1.0 + (size / n_same - 1.0) * decay
    return s


def group_advantages(scores, group_ids, eps: float = 1e-6) -> np.ndarray:
    """A_i = (s_i - mean) / (unbiased std + eps) within each group; A = s for a group of one, 0 for equal scores."""
    s = np.asarray(scores, dtype=np.float64)
    adv = np.zeros_like(s)
    groups = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for idx in groups.values():
        x = s[idx]
        if len(idx) == 1:
            adv[idx] = x
        elif x.max() == x.min():
            adv[idx] = 0.0
        else:
            adv[idx] = (x - x.mean()) / (x.std(ddof=1) + eps)
    return adv


def advantages(correct, langs, query_langs, group_ids, step, total_steps, *, variant="adamame", bonus=2.0,
               lam=1.0, floor=0.1, eps=1e-6) -> np.ndarray:
    """One advantage per rollout, in input order: group-normalised shaped scores of the chosen variant."""
    s = shaped_scores(correct, langs, query_langs, group_ids, step, total_steps, variant=variant, bonus=bonus,
                      lam=lam, floor=floor)
    return group_advantages(s, group_ids, eps)
