import glob
import json
import os

import pytest

from adamame.language import (DEFAULT_LANGUAGES, detect_language, fidelity, fidelity_rates, reward_language,
                              strip_math)
from tests.conftest import SHARED_DATA

MGSM = os.path.join(SHARED_DATA, "eval", "mgsm")

FR = ("Janet a seize canards qui pondent des œufs chaque jour.\nElle en mange trois au petit déjeuner "
      "et utilise quatre œufs pour faire des muffins.\nIl lui reste donc neuf œufs qu'elle vend au marché.")
EN = ("Janet has sixteen ducks that lay eggs every day.\nShe eats three for breakfast and uses four eggs "
      "to bake muffins.\nSo she has nine eggs left that she sells at the market.")
JA = ("ジャネットのアヒルは毎日卵を産みます。\n朝食に三個食べて、マフィンを焼くのに四個使います。\n"
      "残りの卵を市場で売ります。")


def test_strip_math_removes_formulas_commands_numbers():
    assert strip_math("Donc $x^2 + 3 = 7$ et \\(y\\) vaut \\frac{1}{2} soit 16 - 3 = 13.") == "Donc et vaut soit ."


def test_math_only_and_empty_text_is_unknown():
    assert detect_language("") == "unknown"
    assert detect_language("$x^2 + 3x = 10$\n\\[\\frac{1}{2}\\]\n16 - 3 - 4 = 9") == "unknown"


def test_detects_each_language_of_hand_written_traces():
    assert detect_language(FR) == "fr"
    assert detect_language(EN) == "en"
    assert detect_language(JA) == "ja"


def test_restricted_language_set_and_bad_codes():
    assert detect_language(FR, languages=("en", "fr")) == "fr"
    with pytest.raises(ValueError, match="unknown language code"):
        detect_language(FR, languages=("en", "xx"))
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        fidelity(FR, "xx")


def test_reward_language_prefix_sees_only_first_500_chars():
    response = FR.replace("\n", " ") * 3 + "\n" + EN * 20 + "\n</think>\n\\boxed{18}"
    assert len(FR) * 3 > 500
    assert reward_language(response, mode="prefix") == "fr"
    assert reward_language(response, mode="trace") == "en"
    with pytest.raises(ValueError, match="unknown language mode"):
        reward_language(response, mode="middle")


@pytest.mark.skipif(not os.path.isdir(MGSM), reason=f"MGSM data not found at {MGSM}")
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(MGSM, "*.jsonl"))), ids=os.path.basename)
def test_mgsm_questions_are_identified_as_their_language(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    hits = sum(detect_language(r["question"]) == r["lang"] for r in rows)
    assert hits / len(rows) >= 0.99, (path, hits, len(rows))


def test_faithful_trace_passes_every_check():
    assert fidelity(FR, "fr") == {"consistency": True, "line_pass": True, "word_pass": True, "code_switch": False}
    assert fidelity(JA, "ja") == {"consistency": True, "line_pass": True, "word_pass": True, "code_switch": False}


def test_english_trace_for_french_question_fails_line_check():
    f = fidelity(EN, "fr")
    assert not f["consistency"] and not f["line_pass"] and not f["code_switch"]


def test_half_way_language_switch_fails_line_check_and_counts_as_code_switching():
    half = FR.split("\n")[:2] + EN.split("\n")[1:]
    f = fidelity("\n".join(half), "fr")
    assert not f["line_pass"] and f["code_switch"]


def test_math_heavy_lines_do_not_cause_false_failures():
    trace = ("Calculons le nombre d'œufs restants.\n$16 - 3 - 4 = 9$\n\\[ 9 \\times 2 = 18 \\]\n"
             "x = 16 - 7\nElle gagne donc dix-huit dollars par jour.")
    assert fidelity(trace, "fr")["line_pass"]
    trace_ja = "残りの卵の数を計算します。\n$16 - 3 - 4 = 9$\n9 \\times 2 = 18\n答えは18ドルです。"
    f = fidelity(trace_ja, "ja")
    assert f["line_pass"] and f["word_pass"]


def test_word_pass_non_latin_rejects_ascii_words_outside_math():
    assert not fidelity("朝食に三個食べて、muffins を焼きます。残りを市場で売ります。", "ja")["word_pass"]
    assert fidelity("朝食に三個食べて、$x^2$ を計算します。残りを市場で売ります。", "ja")["word_pass"]


def test_latin_letters_are_code_points_up_to_u024f_or_latin_extended_additional():
    """The paper's rule: ě (U+011B) and ạ (U+1EA1, Vietnamese) are Latin; ɐ (U+0250, IPA) and Cyrillic а are not."""
    assert fidelity("Elle mange trois œufs, ě et ạ, au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert not fidelity("Elle mange trois œufs ɐ au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert not fidelity("Elle mange trois œufs а au petit déjeuner chaque matin.", "fr")["word_pass"]


def test_consistency_reads_the_trace_as_written_math_included():
    """The paper identifies the raw trace: English words inside $\\text{}$ count for consistency (the line check
    still strips the math and sees French)."""
    trace = "La réponse est simple et claire.\n" + "$\\text{the total number of apples that she has is}$ " * 3
    f = fidelity(trace, "fr")
    assert not f["consistency"] and f["line_pass"]
    assert fidelity("La réponse est simple et claire, elle a donc seize pommes.", "fr")["consistency"]


def test_word_pass_latin_rejects_non_latin_letters():
    assert not fidelity("Elle mange trois œufs 朝食 au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert fidelity("Elle mange trois œufs au petit déjeuner chaque matin, ça coûte 2 €.", "fr")["word_pass"]


def test_fidelity_rates_by_hand():
    flags = [
        {"consistency": True, "line_pass": True, "word_pass": True, "code_switch": False},
        {"consistency": True, "line_pass": True, "word_pass": False, "code_switch": False},
        {"consistency": False, "line_pass": False, "word_pass": True, "code_switch": True},
        {"consistency": False, "line_pass": False, "word_pass": False, "code_switch": False},
    ]
    r = fidelity_rates(flags)
    assert r["lpr"] == 0.5 and r["wpr"] == 0.5 and r["consistency"] == 0.5 and r["code_switch"] == 0.25
    assert r["lcpr"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert fidelity_rates([])["lcpr"] == 0.0
    assert fidelity_rates(flags[2:])["wpr"] == 0.0 and fidelity_rates(flags[2:])["lcpr"] == 0.0


def test_default_languages_cover_evaluation_and_training_languages():
    assert set(DEFAULT_LANGUAGES) == {"en", "fr", "ja", "ko", "th", "bn", "de", "es", "ru", "sw", "te", "zh", "pt"}
