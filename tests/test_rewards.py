import importlib.util
import math

import numpy as np
import pytest

from adamame.rewards import advantages, alignment_factor, group_advantages, shaped_scores

# ---- the schedule alpha(t) = max(1/2 (1 - cos(pi t / T)), 0.1) ----


def test_alignment_factor_at_landmarks():
    assert alignment_factor(0, 90) == 0.1  # floor
    assert alignment_factor(45, 90) == pytest.approx(0.5)
    assert alignment_factor(90, 90) == pytest.approx(1.0)
    assert alignment_factor(20, 90) == pytest.approx(0.5 * (1 - math.cos(2 * math.pi / 9)))  # 0.11698
    assert alignment_factor(20, 90) == pytest.approx(0.116978, abs=1e-6)


def test_alignment_factor_floor_region():
    # 1/2 (1 - cos(pi t / 90)) < 0.1 for t <= 18 (at t = 18 it is 0.0955)
    assert all(alignment_factor(t, 90) == 0.1 for t in range(0, 19))
    assert alignment_factor(19, 90) > 0.1
    assert alignment_factor(0, 90, floor=0.0) == 0.0


def test_alignment_factor_clamps_and_rejects_bad_total():
    assert alignment_factor(200, 90) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        alignment_factor(1, 0)


# ---- shaped scores ----

GROUP = dict(correct=[1, 1, 0, 0], langs=["fr", "en", "fr", "en"], query_langs=["fr"] * 4, group_ids=[0] * 4)


def test_adamame_scores_by_hand():
    s = shaped_scores(**GROUP, step=90, total_steps=90)  # alpha = 1, B = 2
    assert s.tolist() == [3.0, 1.0, 0.0, 0.0]
    s0 = shaped_scores(**GROUP, step=0, total_steps=90)  # alpha = 0.1
    assert s0.tolist() == pytest.approx([1.2, 1.0, 0.0, 0.0])


def test_variants_by_hand():
    kw = dict(**GROUP, step=45, total_steps=90)  # alpha = 0.5
    assert shaped_scores(**kw, variant="grpo").tolist() == [1, 1, 0, 0]
    assert shaped_scores(**kw, variant="binary-lang", lam=0.5).tolist() == [1.5, 1.0, 0.5, 0.0]
    assert shaped_scores(**kw, variant="adamame").tolist() == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert shaped_scores(**kw, variant="adamame-const").tolist() == pytest.approx([3.0, 1.0, 0.0, 0.0])
    assert shaped_scores(**kw, variant="adamame", bonus=4.0).tolist() == pytest.approx([3.0, 1.0, 0.0, 0.0])


def test_unknown_language_never_matches():
    s = shaped_scores([1, 1], ["unknown", "unknown"], ["unknown", "fr"], [0, 0], 90, 90)
    assert s.tolist() == [1.0, 1.0]


def test_diversity_weights_by_hand():
    kw = dict(correct=[1, 1, 1, 1], langs=["fr", "fr", "fr", "en"], query_langs=["fr"] * 4, group_ids=[0] * 4,
              variant="adamame-diversity")
    # t = 0: alpha = 0.1, decay = 1; w_fr = 1 + (4/3 - 1) = 4/3, w_en = 1 + (4/1 - 1) = 4
    assert shaped_scores(**kw, step=0, total_steps=90).tolist() == pytest.approx([1.2 * 4 / 3] * 3 + [4.0])
    # t = T: decay = 0, w = 1: plain adamame
    assert shaped_scores(**kw, step=90, total_steps=90).tolist() == pytest.approx([3.0, 3.0, 3.0, 1.0])
    # t = T/2: decay = 1/2; w_fr = 1 + (1/3)/2 = 7/6, w_en = 1 + 3/2 = 5/2; alpha = 1/2 -> fr score 2
    assert shaped_scores(**kw, step=45, total_steps=90).tolist() == pytest.approx([2 * 7 / 6] * 3 + [2.5])


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown reward variant"):
        shaped_scores(**GROUP, step=0, total_steps=1, variant="dapo")


# ---- advantages A_i = (s_i - mean) / (std + eps), unbiased std ----


def test_advantages_by_hand():
    a = advantages(**GROUP, step=90, total_steps=90)
    # s = [3, 1, 0, 0]: mean 1, unbiased var (4 + 0 + 1 + 1) / 3 = 2
    sd = math.sqrt(2) + 1e-6
    assert a.tolist() == pytest.approx([2 / sd, 0.0, -1 / sd, -1 / sd], rel=1e-12)


def test_all_correct_group_mixing_languages_pushes_toward_query_language():
    kw = dict(correct=[1, 1, 1, 1], langs=["fr", "fr", "en", "ja"], query_langs=["fr"] * 4, group_ids=[0] * 4)
    a = advantages(**kw, step=0, total_steps=90)
    # s = [1.2, 1.2, 1, 1]: mean 1.1, deviations +-0.1, unbiased std = sqrt(0.04 / 3)
    sd = math.sqrt(0.04 / 3) + 1e-6
    assert a.tolist() == pytest.approx([0.1 / sd, 0.1 / sd, -0.1 / sd, -0.1 / sd], rel=1e-9)
    # ... and, as recipe.md notes, in an all-correct group the std normalisation cancels B and alpha(t)
    b = advantages(**kw, step=90, total_steps=90, bonus=5.0)
    assert b.tolist() == pytest.approx(a.tolist(), rel=1e-4)
    assert advantages(**kw, step=0, total_steps=90, variant="grpo").tolist() == [0.0] * 4


def test_groups_are_normalised_independently_and_keep_input_order():
    correct = [1, 0, 1, 1, 0, 1]
    gids = ["a", "b", "a", "b", "a", "b"]  # interleaved groups
    a = advantages(correct, ["en"] * 6, ["fr"] * 6, gids, 0, 10, variant="grpo")
    # group a: s = [1, 1, 0] -> mean 2/3, std = sqrt(1/3); group b: s = [0, 1, 1] -> same stats
    sd = math.sqrt(1 / 3) + 1e-6
    hi, lo = (1 / 3) / sd, -(2 / 3) / sd
    assert a.tolist() == pytest.approx([hi, lo, hi, hi, lo, hi], rel=1e-12)


def test_group_of_one_and_zero_variance_are_finite():
    a = group_advantages([2.5, 0.0, 0.1, 0.1, 0.1], [0, 1, 2, 2, 2])
    assert a.tolist() == [2.5, 0.0, 0.0, 0.0, 0.0]
    assert np.isfinite(a).all()


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="same length"):
        advantages([1, 0], ["fr"], ["fr", "fr"], [0, 0], 0, 10)


def test_the_released_format_reward_by_hand():
    from adamame.answer import think_format_ok

    assert think_format_ok("<|im_start|>assistant\n<think>\nten letters here\n</think>\nso \\boxed{4}")
    assert not think_format_ok("<think>\nshort\n</think>\n\\boxed{4}")  # fewer than 10 characters of thinking
    assert not think_format_ok("<think>\nlong enough thinking\n</think>\nfour")  # no box after </think>
    assert not think_format_ok("long enough thinking \\boxed{4}")  # no think block


def test_score_checks_the_format_on_prompt_and_response_and_reads_the_language_of_the_raw_response():
    from adamame.data import Question
    from adamame.rollout import Rollout, score

    qs = [Question(id="q", lang="fr", prompt="p", answer="4")]
    fr = "Il faut additionner deux et deux pour trouver la réponse demandée. " * 3
    en = "We add two and two to find the requested answer, which is simple enough. " * 3
    roll = lambda text, raw: Rollout(0, [1], [2], text, "stop", None, raw=raw,  # noqa: E731
                                     prompt_text="<|im_start|>assistant\n<think>\n")
    good, wrong = roll(en + "\n</think>\n\\boxed{4}", fr + "\n</think>\n\\boxed{4}<|im_end|>"), \
        roll(en + "\n</think>\n\\boxed{5}", fr + "\n</think>\n\\boxed{5}<|im_end|>")
    score([good, wrong], qs)
    assert (good.correct, wrong.correct) == (1.0, 0.0)
    assert good.format_ok and wrong.format_ok  # the <think> of the prompt opens the block
    assert good.lang == "fr"  # read from the raw decoded response (text and raw differ here on purpose)
    no_think = Rollout(0, [1], [2], "4", "stop", None, raw="4", prompt_text="user: ")
    score([no_think], qs)
    assert not no_think.format_ok


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="math-verify is not installed")
def test_math_verify_reward_reads_the_prompt_and_response_together():
    from adamame.answer import reward_check

    prompt = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    # the sequence decides, not the response alone
    assert reward_check("so \\boxed{5}", "4", "math-verify", sequence=prompt + "two and two\n</think>\n\\boxed{4}")[0] == 1.0
    assert reward_check("so \\boxed{4}", "4", "math-verify", sequence=prompt + "so \\boxed{5}")[0] == 0.0
    assert reward_check("so \\boxed{4}", "4", "math-verify")[0] == 1.0  # no sequence: the response


def test_a_group_of_equal_scores_gets_zero_advantage_at_every_step():
    """An all-correct group whose every rollout matches its query language scores 1 + B alpha(t) for all: its
    advantages are the equations' 0 at every step. The released code computes them in float32, where the group's mean
    of eight copies of 1 + 2 alpha is off by an ulp at 47 of its 89 steps, giving +-0.106 or +-0.190 (README's
    differences)."""
    import numpy as np

    from adamame.rewards import advantages

    for t in range(90):
        adv = advantages([1] * 8, ["fr"] * 8, ["fr"] * 8, [0] * 8, t, 90)
        assert np.array_equal(adv, np.zeros(8)), (t, adv)


def test_variant_alpha_is_the_factor_each_variant_scales_its_bonus_by():
    """By hand: alpha(45 of 90) = 1/2 (1 - cos(pi / 2)) = 0.5; at step 0 the floor 0.1; adamame-const 1; the variants
    without the scheduled bonus 0. shaped_scores uses the same factor: a correct query-language rollout scores 1 + 2
    alpha."""
    from adamame.rewards import variant_alpha
    assert variant_alpha("adamame", 45, 90) == pytest.approx(0.5)
    assert variant_alpha("adamame-diversity", 45, 90) == pytest.approx(0.5)
    assert variant_alpha("adamame", 0, 90, floor=0.1) == 0.1
    assert variant_alpha("adamame-const", 3, 90) == 1.0
    assert variant_alpha("grpo", 45, 90) == 0.0 and variant_alpha("binary-lang", 45, 90) == 0.0
    for variant, alpha in (("adamame", 0.5), ("adamame-const", 1.0)):
        s = shaped_scores([1], ["th"], ["th"], [0], 45, 90, variant=variant)
        assert s[0] == pytest.approx(1 + 2 * alpha)
