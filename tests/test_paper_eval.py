"""The paper's evaluation script (3_eval/metrics.py), reproduced number for number.

The golden CSVs in tests/fixtures/paper_eval/ are what the paper's unmodified script wrote (lingua, Math-Verify) for
the constructed records of tests/paper_eval.py; CI has neither package, so the exact aggregation is checked with a
detector that replays lingua's recorded decisions, and the tests that need lingua itself skip without it."""

import csv
import importlib.util
import os
import subprocess
import sys

import pytest

from adamame.language import BENCHMARK_LANGUAGES, KNOWN_LANGUAGES, get_detector
from adamame.scoring import PAPER_COLUMNS, paper_rows, score_record, write_paper_csv
from tests.paper_eval import FIXTURES, Replay, _score, records

HAS_LINGUA = importlib.util.find_spec("lingua") is not None
HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
BENCHMARKS = ("mgsm", "msvamp")


def _replay(bench):
    return Replay(os.path.join(FIXTURES, f"lingua_{bench}.json"))


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_paper_csv_equals_the_paper_scripts_as_text(bench, tmp_path):
    """Every cell, as text, equals what the paper's script wrote for the same records (its decisions replayed; the
    built-in checker agrees with Math-Verify on these integer answers)."""
    out = tmp_path / "paper_summary.csv"
    write_paper_csv(_score(bench, _replay(bench)), str(out))
    with open(os.path.join(FIXTURES, f"paper_{bench}.csv"), "rb") as f:
        assert out.read_bytes() == f.read()


@pytest.mark.skipif(not HAS_LINGUA, reason="lingua is not installed (pip install lingua-language-detector)")
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_the_recorded_decisions_are_linguas(bench):
    replay, live = _replay(bench), get_detector("lingua", BENCHMARK_LANGUAGES[bench])
    assert replay.languages == live.languages
    assert {t: live.detect(t) for t in replay._detect} == replay._detect
    assert {t: live.languages_in(t) for t in replay._multiple} == replay._multiple


@pytest.mark.skipif(not (HAS_LINGUA and HAS_MATH_VERIFY), reason="needs lingua and math-verify (not installed)")
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_with_lingua_and_math_verify_every_cell_equals_the_papers(bench):
    rows = paper_rows(_score(bench, get_detector("lingua", BENCHMARK_LANGUAGES[bench]), verifier="math-verify"))
    gold = list(csv.DictReader(open(os.path.join(FIXTURES, f"paper_{bench}.csv"), encoding="utf-8")))
    assert [{c: str(r[c]) for c in PAPER_COLUMNS} for r in rows] == gold


class Rule:
    """A detector by rule, for definitions checked by hand: a text's language is the first code it contains written as
    `@xx`; no code: no language. languages_in gives every code in order."""

    name = version = "rule"
    languages = KNOWN_LANGUAGES

    def detect(self, text):
        codes = self.languages_in(text)
        return codes[0] if codes else None

    line_language = detect

    @staticmethod
    def languages_in(text, line_languages=None):
        import re

        return re.findall(r"@([a-z]{2})\b", text)


def test_each_paper_definition_by_hand():
    """Two French questions, four candidates each; every number below is counted by hand from the definitions."""
    q1 = ["<think>\n@fr un\n@fr deux\n</think>\n\\boxed{5}",  # first: correct, consistent, lines pass, words pass
          "<think>\n@en one\n</think>\n\\boxed{5}",  # a line in English: LPR fails, word check not run
          "<think>\n@fr un\n@en two\n</think>\n\\boxed{4}",  # wrong, consistent (first code), LPR fails, switch fr+en
          "@fr sans fin de réflexion \\boxed{5}"]  # no </think>: empty trace (no language), correct from the answer
    q2 = ["<think>\n@fr un œuf ɐ\n</think>\n\\boxed{7}",  # wrong, LPR passes, word check fails (ɐ is not Latin)
          "<think>\n@fr un\n$x$\n</think>\n\\boxed{8}",  # correct; the math-only line carries no language
          "<think>\n@de eins @fr un\n</think>\n\\boxed{9}",  # wrong; the line is de: LPR fails; switch de+fr
          "<think>\n@de eins @fr un @en\n</think>\n\\boxed{9}"]  # wrong; switch de+en+fr
    recs = [{"lang": "fr", "answer": "5", "candidates": q1, "time": "01:30"},
            {"lang": "fr", "answer": "8", "candidates": q2, "time": "bad"}]
    rule = Rule()
    scored = [score_record(r, detector=rule) for r in recs]
    (row,) = paper_rows(scored)
    assert row["pass@1"] == 0.5  # first candidates: q1 correct, q2 wrong
    assert row["pass@4"] == 1.0
    assert row["language_consistency"] == round((2 / 4 + 2 / 4) / 2, 3)  # q1: 1st, 3rd; q2: 1st, 2nd
    assert row["LPR"] == round((2 / 4 + 2 / 4) / 2, 3)  # q1: 1st, 4th (empty trace); q2: 1st, 2nd
    assert row["WPR"] == round((2 / 2 + 1 / 2) / 2, 3)  # over line-passing candidates only
    assert row["LCPR"] == round(2 * 0.5 * 0.75 / (0.5 + 0.75), 3)
    assert row["code_switch_rate"] == round((1 / 4 + 2 / 4) / 2, 3)
    assert row["cs_mixtures"] == "{en+fr: 1, de+fr: 1}"  # per question its most common mixture (ties: first seen)
    assert row["avg_time"] == 90.0  # "bad" is skipped, as the script skips it
    chars = [sum(len(c) for c in q) / 4 / 4 / 8192 for q in (q1, q2)]
    assert row["ttc_rate"] == round(sum(chars) / 2, 3)


def test_lingua_missing_is_one_clear_error(tmp_path):
    """Without the package, --lang-id lingua stops at once with the pip command, no stack trace."""
    script = ("import sys; sys.modules['lingua'] = None; sys.argv = ['evaluate.py', '--score', 'x.jsonl', '--lang-id', "
              "'lingua', '--out', %r]; import evaluate; evaluate.cli()" % str(tmp_path / "out"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pip install lingua-language-detector" in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_the_records_have_the_properties_they_claim():
    """The constructed records exercise every branch: code switches, foreign words, empty traces, wrong answers, and
    a first candidate that is sometimes wrong."""
    recs = records("mgsm")
    cands = [c for r in recs for c in r["candidates"]]
    assert sum("</think>" not in c for c in cands) > 0 and sum("$$" in c for c in cands) > 0
    assert {r["candidates"][0].endswith(f"{{{r['answer']}}}") for r in recs} == {True, False}
    assert len({r["lang"] for r in recs}) == 12 and all(len(r["candidates"]) == 4 for r in recs)
