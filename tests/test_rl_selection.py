"""evaluate.py --select-rl: the released RL data stage (sample_for_rl.py's draw, filter_for_rl.py's 1 <= correct < 8),
checked against what the released filter_file wrote for hand-made candidates (tests/rl_selection.py)."""

import importlib.util
import json
import os

import pytest

from adamame.data import Question, draw_per_language
from adamame.scoring import score_record, select_for_rl
from tests.helpers import run_cli
from tests.rl_selection import GOOD, WRONG, records

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "rl_selection", "released_kept.jsonl")
HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None


def _released():
    with open(FIXTURE, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


@pytest.mark.parametrize("verifier", ["builtin", pytest.param("math-verify", marks=pytest.mark.skipif(
    not HAS_MATH_VERIFY, reason="math-verify is not installed (pip install math-verify)"))])
def test_select_rl_keeps_exactly_what_the_released_filter_keeps(tmp_path, verifier):
    """Same questions, same order, same correct_num (0, 1, 7 and 8 of 8 among them), from evaluate.py --score."""
    gen = tmp_path / "gen.jsonl"
    _write(gen, [r for recs in records().values() for r in recs])
    r = run_cli(["evaluate.py", "--score", str(gen), "--select-rl", "0", "--verifier", verifier, "--out",
                 str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr[-2000:]
    ours = [json.loads(line) for line in open(tmp_path / "out" / "rl_train.jsonl", encoding="utf-8")]
    assert [(x["id"], x["correct_num"]) for x in ours] == [(x["id"], x["correct_num"]) for x in _released()]
    assert {x["correct_num"] for x in _released()} >= {1, 7}  # the bounds are kept ...
    assert "[fr] 4/7 kept (57.1%) | avg correct_num=3.250" in r.stdout  # ... and printed as the released script does
    assert "[th] 2/3 kept (66.7%) | avg correct_num=6.000" in r.stdout and "Total: 8/14 kept" in r.stdout


def test_bounds_by_hand():
    """0 and 8 correct of 8 are dropped, 1 and 7 kept; k follows the candidates (1 <= c < n)."""
    for n_good, n, kept in ((0, 8, False), (1, 8, True), (7, 8, True), (8, 8, False), (3, 4, True), (4, 4, False)):
        rec = score_record({"id": "q", "lang": "fr", "question": "Q", "answer": "7",
                            "candidates": [GOOD] * n_good + [WRONG] * (n - n_good)})
        rows, stats = select_for_rl([rec])
        assert (len(rows) == 1) == kept and stats["fr"][:2] == (int(kept), 1)
        if kept:
            assert rows[0]["correct_num"] == n_good and rows[0]["question"] == "Q"  # a bare question: localized later


def test_the_kept_rows_are_rl_prompts_train_grpo_reads(tmp_path):
    """evaluate.py's own records hold the rendered prompt: it stays the RL row's prompt, not localized twice."""
    from adamame.data import localized_prompt, read_questions

    prompt = localized_prompt("ja", "3と4は？")
    rec = score_record({"id": "q1", "lang": "ja", "question": prompt, "answer": "7", "candidates": [GOOD, WRONG]})
    rows, _ = select_for_rl([rec])
    path = tmp_path / "rl.jsonl"
    _write(path, rows)
    (q,) = read_questions(str(path))
    assert q.prompt == prompt and q.id == "q1" and q.answer == "7"


def test_the_draw_is_seeded_per_language_and_disjoint():
    qs = [Question(f"{lang}{i}", lang, f"{lang} question {i}", "1") for lang in ("fr", "ja") for i in range(10)]
    train, val = draw_per_language(qs, 4, 3, seed=42)
    assert [sum(q.lang == lang for q in train) for lang in ("fr", "ja")] == [4, 4]
    assert [sum(q.lang == lang for q in val) for lang in ("fr", "ja")] == [3, 3]
    assert not {q.id for q in train} & {q.id for q in val}
    assert draw_per_language(qs, 4, 3, seed=42) == (train, val)  # seeded
    assert draw_per_language(qs, 4, 3, seed=1) != (train, val)
    assert draw_per_language(qs, 0) == (qs, [])  # 0: every question, as it is
    dup = qs + [Question("dup", "fr", "fr question 0", "1")]  # the same text twice is drawn once
    assert len(draw_per_language(dup, 20)[0]) == 20


def test_select_rl_from_a_model_writes_both_files(tmp_path):
    """The generation path: N drawn per language get k = 8 candidates (the default with --select-rl); the validation
    draw is written unfiltered and disjoint; only mixed questions reach rl_train.jsonl."""
    from tests.helpers import save_tiny_hf, save_tiny_tokenizer

    save_tiny_hf(tmp_path / "m", "qwen2", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(tmp_path / "m", vocab_size=300)
    pool = tmp_path / "pool.jsonl"
    _write(pool, [{"id": f"{lang}{i}", "lang": lang, "question": f"{lang} {i} + 1 ?", "answer": str(i + 1)}
                  for lang in ("fr", "th") for i in range(6)])
    r = run_cli(["evaluate.py", "--model", str(tmp_path / "m"), "--data", str(pool), "--select-rl", "3",
                 "--select-val", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr[-2000:]
    gens = [json.loads(line) for line in open(tmp_path / "out" / "generations.jsonl", encoding="utf-8")]
    assert len(gens) == 6 and all(len(g["candidates"]) == 8 for g in gens)
    val = [json.loads(line) for line in open(tmp_path / "out" / "rl_val.jsonl", encoding="utf-8")]
    assert len(val) == 4 and not {v["id"] for v in val} & {g["id"] for g in gens}
    kept = [json.loads(line) for line in open(tmp_path / "out" / "rl_train.jsonl", encoding="utf-8")]
    mixed = [g["id"] for g in gens if 0 < sum(s["correct"] for s in g["scores"]) < 8]
    assert [k["id"] for k in kept] == mixed and "[fr] " in r.stdout and "[th] " in r.stdout
