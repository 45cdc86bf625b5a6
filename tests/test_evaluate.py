import json
import os

import pytest

from adamame.scoring import pass_at_k, score_record, summarize
from tests.conftest import SHARED_DATA
from tests.helpers import run_cli, save_tiny_hf, save_tiny_tokenizer

FR_TRACE = ("Janet a seize canards qui pondent des œufs chaque jour.\nElle en mange trois au petit déjeuner "
            "et utilise quatre œufs pour les muffins.\nIl lui reste donc neuf œufs qu'elle vend au marché.")
EN_TRACE = ("Janet has sixteen ducks that lay eggs every day.\nShe eats three for breakfast and uses four eggs "
            "to bake muffins.\nSo she has nine eggs left that she sells at the market.")


def _rec(lang, answer, candidates):
    return score_record({"lang": lang, "answer": answer, "candidates": candidates,
                         "candidate_tokens": [len(c) // 4 for c in candidates]})


def test_correct_english_trace_for_french_question():
    r = _rec("fr", "18", [EN_TRACE + "\n</think>\nLa réponse est \\boxed{18}."])
    s = r["scores"][0]
    assert s["correct"] and not s["line_pass"] and not s["consistency"] and not s["lang_match"]
    m = summarize([r], 1)["languages"]["fr"]
    assert m["pass@1"] == 1.0 and m["lpr"] == 0.0 and m["lcpr"] == 0.0 and m["consistency"] == 0.0


def test_faithful_french_trace():
    r = _rec("fr", "18", [FR_TRACE + "\n</think>\n\\boxed{18}"])
    m = summarize([r], 1)["languages"]["fr"]
    assert m == pytest.approx({**m, "pass@1": 1.0, "lpr": 1.0, "wpr": 1.0, "lcpr": 1.0, "consistency": 1.0,
                               "code_switch": 0.0, "lang_match": 1.0})


def test_trace_switching_language_midway():
    mixed = "\n".join(FR_TRACE.split("\n")[:2] + EN_TRACE.split("\n")[2:])
    s = _rec("fr", "9", [mixed + "\n</think>\n\\boxed{9}"])["scores"][0]
    assert s["correct"] and not s["line_pass"] and s["code_switch"]


def test_response_without_close_think_has_an_empty_trace_and_is_all_answer():
    """The paper's split: no </think> -> trace "" (not consistent, passes the line and word checks vacuously) and the
    whole text is the answer part, whose first box counts."""
    s = _rec("fr", "9", [FR_TRACE + " Donc \\boxed{9}."])["scores"][0]
    assert s["correct"] and s["line_pass"] and s["word_pass"] and not s["consistency"] and not s["code_switch"]


def test_correct_when_the_trace_box_is_right_and_the_answer_box_wrong():
    """The paper: the first box of the answer part, then the first of the trace; either verifying is correct."""
    s = _rec("fr", "9", [FR_TRACE + " \\boxed{9}\n</think>\n\\boxed{8}"])["scores"][0]
    assert s["correct"]
    s = _rec("fr", "9", [FR_TRACE + " \\boxed{8}\n</think>\n\\boxed{9}"])["scores"][0]
    assert s["correct"]
    s = _rec("fr", "9", [FR_TRACE + " \\boxed{7} \\boxed{9}\n</think>\n\\boxed{8} \\boxed{9}"])["scores"][0]
    assert not s["correct"]  # only the first box of each part is read


def test_tokens_are_characters_over_four_and_model_tokens_the_tokenizers():
    text = "abcdefghij\n</think>\n\\boxed{1}"
    r = score_record({"lang": "en", "answer": "1", "candidates": [text, text + "xx"], "candidate_tokens": [7, 9]})
    m = summarize([r], 2)["languages"]["en"]
    assert m["tokens"] == pytest.approx((len(text) + len(text) + 2) / 8)
    assert m["model_tokens"] == pytest.approx(8.0)


def test_wpr_is_a_mean_over_questions_of_line_passing_candidates_only():
    """Question 1: two line-passing candidates, one with an English word in a Japanese trace (word rate 1/2);
    question 2: none passes the line check (excluded from WPR); question 3: one passing candidate, clean (1).
    WPR = (1/2 + 1) / 2 = 0.75, not the candidate-level 2/3; LPR = mean of per-question rates (1 + 0 + 1/2) / 3."""
    ja = "朝食に三個食べて、残りを市場で売ります。毎日卵を産みます。"
    ja_word = "朝食に三個食べて、muffins を焼きます。残りを市場で売ります。"
    en = "She eats three for breakfast and bakes muffins every single day."
    end = "\n</think>\n\\boxed{1}"
    q1 = _rec("ja", "1", [ja + end, ja_word + end])
    q2 = _rec("ja", "1", [en + end, en + end])
    q3 = _rec("ja", "1", [ja + end, en + end])
    m = summarize([q1, q2, q3], 2)["languages"]["ja"]
    assert m["wpr"] == pytest.approx(0.75)
    assert m["lpr"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["lcpr"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)


def test_empty_candidates():
    s = _rec("fr", "9", [""])["scores"][0]
    assert not s["correct"] and not s["consistency"] and s["line_pass"] and not s["code_switch"]


def test_pass_at_k_by_hand_and_on_mixed_groups():
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    good, bad = "x\n</think>\n\\boxed{1}", "x\n</think>\n\\boxed{2}"
    recs = [_rec("en", "1", [good, bad, bad, bad]), _rec("en", "1", [bad] * 4), _rec("en", "1", [good, good, bad, bad])]
    m = summarize(recs, 4)["languages"]["en"]
    assert m["pass@1"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert m["pass@k"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["tokens_correct"] == pytest.approx(len(good) // 4)


def test_in_and_out_of_domain_are_means_of_languages():
    good = "x\n</think>\n\\boxed{1}"
    recs = [_rec("fr", "1", [good]), _rec("ja", "2", [good]), _rec("de", "1", [good]), _rec("zh", "1", [good])]
    s = summarize(recs, 1)
    assert s["in_domain"]["pass@1"] == 0.5 and s["out_of_domain"]["pass@1"] == 1.0 and s["k"] == 1
    assert set(s["languages"]) == {"fr", "ja", "de", "zh"}


def test_score_mode_cli_scores_foreign_generations(tmp_path):
    gen = tmp_path / "gen.jsonl"
    rows = [{"id": "1", "lang": "fr", "answer": "18", "candidates": [FR_TRACE + "\n</think>\n\\boxed{18}",
                                                                     EN_TRACE + "\n</think>\n\\boxed{17}"]}]
    gen.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    r = run_cli(["evaluate.py", "--score", str(gen), "--out", str(tmp_path / "out"), "--k", "2"])
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["languages"]["fr"]["pass@1"] == 0.5 and s["languages"]["fr"]["lpr"] == 0.5 and s["k"] == 2
    assert (tmp_path / "out" / "summary.csv").read_text().startswith("metric,fr,in_domain")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"lang": "fr", "answer": "1"}\n', encoding="utf-8")
    r = run_cli(["evaluate.py", "--score", str(bad), "--out", str(tmp_path / "o2")])
    assert r.returncode == 2 and f"{bad}:1: missing field 'candidates'" in r.stderr


MGSM = os.path.join(SHARED_DATA, "eval", "mgsm")


@pytest.mark.skipif(not os.path.isdir(MGSM), reason=f"MGSM data not found at {MGSM}")
def test_end_to_end_on_a_tiny_model_and_mgsm_questions(tmp_path):
    save_tiny_hf(tmp_path / "model", "qwen2", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(tmp_path / "model", vocab_size=300)
    files = [os.path.join(MGSM, f"{lang}.jsonl") for lang in ("fr", "de")]
    r = run_cli(["evaluate.py", "--model", str(tmp_path / "model"), "--data", *files, "--limit", "3", "--k", "2",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    recs = [json.loads(line) for line in open(out / "generations.jsonl")]
    assert len(recs) == 6 and all(len(rec["candidates"]) == 2 for rec in recs)
    assert all(len(rec["scores"]) == 2 and "correct" in rec["scores"][0] for rec in recs)
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == {"languages", "in_domain", "out_of_domain", "k"} and s["k"] == 2
    for m in ("pass@1", "pass@k", "consistency", "lpr", "wpr", "lcpr", "code_switch", "tokens", "tokens_correct"):
        assert m in s["languages"]["fr"]
    assert s["languages"]["de"]["tokens"] <= 8
    assert "pass@2 %" in r.stdout and (out / "summary.csv").exists()


def test_score_honours_k_and_checks_every_record_before_writing(tmp_path):
    """--k is pass@k in summary.json and the paper CSV; a record with fewer candidates, or token counts of another
    length, is one error naming file:line (exit 2), and --out is not created."""
    good = FR_TRACE + "\n</think>\n\\boxed{18}"
    bad = EN_TRACE + "\n</think>\n\\boxed{17}"
    rows = [{"lang": "fr", "answer": "18", "candidates": [bad, bad, good, bad]},
            {"lang": "fr", "answer": "18", "candidates": [bad, bad, bad, bad]}]
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for k, pass_k, paper in (("2", 0.5 * (1 - 3 / 6), "0.0"), ("4", 0.5, "0.5")):  # 1 - C(3,2)/C(4,2) for k = 2
        out = tmp_path / f"k{k}"
        r = run_cli(["evaluate.py", "--score", str(gen), "--out", str(out), "--k", k])
        assert r.returncode == 0, r.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["k"] == int(k) and s["languages"]["fr"]["pass@k"] == pytest.approx(pass_k)
        header, row = (out / "paper_summary.csv").read_text().splitlines()[:2]
        col = header.split(",").index(f"pass@{k}")  # any of the first k candidates
        assert row.split(",")[col] == paper
    short = dict(rows[0], candidates=[good, bad])
    wrong_counts = dict(rows[0], candidate_tokens=[5, 6])
    for line2, message in ((short, "field 'candidates' has 2, fewer than --k 4"),
                           (wrong_counts, "field 'candidate_tokens' must be a list of 4 integers")):
        gen.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (rows[0], line2)), encoding="utf-8")
        out = tmp_path / "never"
        r = run_cli(["evaluate.py", "--score", str(gen), "--out", str(out)])
        assert r.returncode == 2 and f"{gen}:2: {message}" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr  # the identifier line + error
        assert not out.exists()


EXEMPLARS = os.path.join(SHARED_DATA, "sft", "mgsm_exemplars.jsonl")


@pytest.mark.skipif(not os.path.isfile(EXEMPLARS), reason=f"MGSM exemplar solutions not found at {EXEMPLARS}")
def test_a_russian_trace_matches_its_russian_query(tmp_path):
    """The 8 Russian MGSM exemplar solutions as traces, each beside the English solution of the same problem: half
    of each question's candidates reason in Russian, so ru lang_match and consistency are 0.5 by hand count (before,
    trace_lang was read among the reward's 14 languages, which have no ru: the Russian ones came out 'sw')."""
    rows = [json.loads(line) for line in open(EXEMPLARS, encoding="utf-8")]
    en = {r["id"].rsplit("-", 1)[1]: r for r in rows if r["lang"] == "en"}
    recs = []
    for r in (r for r in rows if r["lang"] == "ru"):
        box = f"\n</think>\n\\boxed{{{r['answer']}}}"
        english = en[r["id"].rsplit("-", 1)[1]]["solution"] + box
        recs.append({"id": r["id"], "lang": "ru", "answer": r["answer"],
                     "candidates": [r["solution"] + box, english, r["solution"] + box, english]})
    gen = tmp_path / "ru.jsonl"
    gen.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    r = run_cli(["evaluate.py", "--score", str(gen), "--benchmark", "mgsm", "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr
    ru = json.loads((tmp_path / "out" / "summary.json").read_text())["languages"]["ru"]
    assert ru["lang_match"] == pytest.approx(0.5) and ru["consistency"] == pytest.approx(0.5)
    assert ru["n_query"] == 16 and ru["n_english"] == 16 and ru["pass@1"] == 1.0
    scored = [json.loads(line) for line in open(tmp_path / "out" / "generations.jsonl", encoding="utf-8")]
    assert {s["trace_lang"] for rec in scored for s in rec["scores"][::2]} == {"ru"}


def test_score_reads_a_russian_trace_as_russian(tmp_path):
    """Self-contained (no shared data): a Russian trace and an English one for a Russian question."""
    from tests.test_language import EN, RU

    rec = {"lang": "ru", "answer": "9", "candidates": [RU + "\n</think>\n\\boxed{9}", EN + "\n</think>\n\\boxed{9}"]}
    gen = tmp_path / "ru.jsonl"
    gen.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    r = run_cli(["evaluate.py", "--score", str(gen), "--benchmark", "mgsm", "--k", "2", "--out", str(tmp_path / "o")])
    assert r.returncode == 0, r.stderr
    scored = json.loads((tmp_path / "o" / "generations.jsonl").read_text(encoding="utf-8"))["scores"]
    assert [s["trace_lang"] for s in scored] == ["ru", "en"] and [s["lang_match"] for s in scored] == [True, False]
    assert [s["consistency"] for s in scored] == [True, False]


# MSVAMP's two languages that have no released instruction (written for this test, with their answers)
MSVAMP_EXTRA = {
    "ar": [("لدى سارة 12 تفاحة. أعطت 5 تفاحات لصديقتها. كم تفاحة بقيت لديها؟", "7"),
           ("اشترى أحمد 3 علب، في كل علبة 4 أقلام. كم قلمًا اشترى؟", "12")],
    "vi": [("Lan có 15 quả cam. Cô ấy cho em trai 6 quả. Lan còn lại bao nhiêu quả cam?", "9"),
           ("Một lớp học có 4 hàng ghế, mỗi hàng có 7 ghế. Lớp học có bao nhiêu ghế?", "28")],
}


def test_msvamp_arabic_and_vietnamese_questions_are_evaluated(tmp_path):
    save_tiny_hf(tmp_path / "model", "qwen2", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(tmp_path / "model", vocab_size=300)
    for lang, qs in MSVAMP_EXTRA.items():
        (tmp_path / f"{lang}.jsonl").write_text("".join(
            json.dumps({"id": f"{lang}-{i}", "lang": lang, "question": q, "answer": a}, ensure_ascii=False) + "\n"
            for i, (q, a) in enumerate(qs)), encoding="utf-8")
    r = run_cli(["evaluate.py", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "ar.jsonl"),
                 str(tmp_path / "vi.jsonl"), "--benchmark", "msvamp", "--k", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(s["languages"]) == {"ar", "vi"}
    prompts = [json.loads(line)["question"] for line in open(tmp_path / "out" / "generations.jsonl", encoding="utf-8")]
    from adamame.language import INSTRUCTIONS

    assert sum(p.startswith(INSTRUCTIONS["ar"] + "\n\n") for p in prompts) == 2
    assert sum(p.startswith(INSTRUCTIONS["vi"] + "\n\n") for p in prompts) == 2
