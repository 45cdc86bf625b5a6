"""The README's code that is not a command: the TRL reward function runs, on TRL's argument shapes, and gives the
recipe's scores (checked against shaped_scores on the same rollouts by hand)."""

import os
import re
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block(name):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(rf"<!-- {name} -->\n```python\n(.*?)```\n<!-- /{name} -->", text, re.S)
    assert m, f"README.md has no {name} block"
    return m.group(1)


def test_the_trl_reward_block_gives_the_recipes_scores():
    scope = {}
    exec(_block("trl-example"), scope)  # noqa: S102  (the README's own code)
    fr = "Je compte : 3 plus 4 font 7, donc la réponse est sept.\n</think>\n\\boxed{7}"
    en = "I count: 3 plus 4 makes 7, so the answer is seven.\n</think>\n\\boxed{7}"
    wrong = "Je compte : 3 plus 4 font 8, donc la réponse est huit.\n</think>\n\\boxed{8}"
    completions = [[{"role": "assistant", "content": t}] for t in (fr, en, wrong, fr)]  # TRL's conversational shape
    state = SimpleNamespace(global_step=45, max_steps=90)  # alpha(45 of 90) = 1/2: a match scores 1 + 2 * 1/2 = 2
    got = scope["adamame_reward"](prompts=["q"] * 4, completions=completions, lang=["fr"] * 4, answer=["7"] * 4,
                                  trainer_state=state)
    assert got == pytest.approx([2.0, 1.0, 0.0, 2.0])
    state = SimpleNamespace(global_step=0, max_steps=90)  # the floor 0.1 at the first step: 1.2
    got = scope["adamame_reward"](prompts=["q"] * 2, completions=[fr, en], lang=["fr"] * 2, answer=["7"] * 2,
                                  trainer_state=state)
    assert got == pytest.approx([1.2, 1.0])
