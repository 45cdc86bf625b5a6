import glob
import json
import os

import pytest

from adamame.language import (BENCHMARK_LANGUAGES, KNOWN_LANGUAGES, TRAIN_LANGUAGES, detect_language, fidelity,
                              fidelity_rates, get_detector, reward_language, strip_math)
from tests.conftest import SHARED_DATA

MGSM = os.path.join(SHARED_DATA, "eval", "mgsm")

FR = ("Janet a seize canards qui pondent des œufs chaque jour.\nElle en mange trois au petit déjeuner "
      "et utilise quatre œufs pour faire des muffins.\nIl lui reste donc neuf œufs qu'elle vend au marché.")
EN = ("Janet has sixteen ducks that lay eggs every day.\nShe eats three for breakfast and uses four eggs "
      "to bake muffins.\nSo she has nine eggs left that she sells at the market.")
JA = ("ジャネットのアヒルは毎日卵を産みます。\n朝食に三個食べて、マフィンを焼くのに四個使います。\n"
      "残りの卵を市場で売ります。")


LANGID = get_detector("langid", KNOWN_LANGUAGES)


def fid(trace, lang):
    return fidelity(trace, lang, LANGID)


def test_strip_math_is_the_papers():
    """3_eval/metrics.py's rules: display and inline math, environments, a command with its (first) argument, runs of
    digits and operators that are not glued to a word (x2, 3x and the digits of 2nd stay)."""
    assert strip_math("Donc $x^2 + 3 = 7$ et \\(y\\) vaut \\frac{1}{2} soit 16 - 3 = 13.") == \
        "Donc   et   vaut    soit"
    assert strip_math("a \\begin{align} x &= 1 \\end{align} b $$y$$ c \\[z\\] d") == "a   b   c   d"
    assert strip_math("le 2nd terme vaut 3x, soit x2 = (4)") == "le 2nd terme vaut 3x, soit x2"
    assert strip_math("\\boxed{42} est \\text{la réponse}") == "est"


def test_only_empty_text_is_unknown_for_the_training_rule():
    """langid always answers for non-empty text (a math-only prefix gets some language); only empty text is
    unknown, as in the released reward."""
    assert detect_language("") == "unknown" and reward_language("") == "unknown" and reward_language("  ") == "unknown"
    assert reward_language("$x^2 + 3x = 10$\n16 - 3 - 4 = 9") != "unknown"  # math only: still an answer


def test_detects_each_language_of_hand_written_traces():
    assert detect_language(FR) == "fr"
    assert detect_language(EN) == "en"
    assert detect_language(JA) == "ja"


def test_restricted_language_set_and_bad_codes():
    assert detect_language(FR, languages=("en", "fr")) == "fr"
    with pytest.raises(ValueError, match="unknown language code"):
        detect_language(FR, languages=("en", "xx"))
    with pytest.raises(ValueError, match="unknown language identifier"):
        get_detector("cld3")


def test_reward_language_prefix_sees_only_first_500_raw_chars():
    response = FR.replace("\n", " ") * 3 + "\n" + EN * 20 + "\n</think>\n\\boxed{18}"
    assert len(FR) * 3 > 500
    assert reward_language(response, mode="prefix") == "fr"
    assert reward_language(response, mode="trace") == "en"
    with pytest.raises(ValueError, match="unknown language mode"):
        reward_language(response, mode="middle")
    # raw: English words inside math count (the old rule stripped them first)
    math_words = "$\\text{the number of apples that she has left is}$ " * 8 + FR
    assert reward_language(math_words) == "en"


@pytest.mark.skipif(not os.path.isdir(MGSM), reason=f"MGSM data not found at {MGSM}")
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(MGSM, "*.jsonl"))), ids=os.path.basename)
def test_mgsm_questions_are_identified_as_their_language(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    hits = sum(detect_language(r["question"]) == r["lang"] for r in rows)
    assert hits / len(rows) >= 0.99, (path, hits, len(rows))


def test_faithful_trace_passes_every_check():
    for trace, lang in ((FR, "fr"), (JA, "ja")):
        assert fid(trace, lang) == {"consistency": True, "line_pass": True, "word_pass": True, "code_switch": False,
                                    "cs_languages": [lang]}


def test_english_trace_for_french_question_fails_line_check():
    f = fid(EN, "fr")
    assert not f["consistency"] and not f["line_pass"] and not f["code_switch"]
    assert f["word_pass"] is None  # words are scored only for traces that pass the line check


def test_half_way_language_switch_fails_line_check_and_counts_as_code_switching():
    half = FR.split("\n")[:2] + EN.split("\n")[1:]
    f = fid("\n".join(half), "fr")
    assert not f["line_pass"] and f["code_switch"]


def test_math_heavy_lines_do_not_cause_false_failures():
    trace = ("Calculons le nombre d'œufs restants.\n$16 - 3 - 4 = 9$\n\\[ 9 \\times 2 = 18 \\]\n"
             "x = 16 - 7\nElle gagne donc dix-huit dollars par jour.")
    assert fid(trace, "fr")["line_pass"]
    trace_ja = "残りの卵の数を計算します。\n$16 - 3 - 4 = 9$\n$9 \\times 2 = 18$\n答えは18ドルです。"
    f = fid(trace_ja, "ja")
    assert f["line_pass"] and f["word_pass"]
    # the paper's rules strip only delimited math and \\cmd{arg}: a bare \\times is an ASCII word for the word check
    assert fid(trace_ja.replace("$9 \\times 2 = 18$", "9 \\times 2 = 18"), "ja")["word_pass"] is False


def test_word_pass_non_latin_rejects_ascii_words_outside_math():
    assert not fid("朝食に三個食べて、muffins を焼きます。残りを市場で売ります。", "ja")["word_pass"]
    assert fid("朝食に三個食べて、$x^2$ を計算します。残りを市場で売ります。", "ja")["word_pass"]


def test_latin_letters_are_code_points_up_to_u024f_or_latin_extended_additional():
    """The paper's rule: ě (U+011B) and ạ (U+1EA1, Vietnamese) are Latin; ɐ (U+0250, IPA) and Cyrillic а are not."""
    assert fid("Elle mange trois œufs, ě et ạ, au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert not fid("Elle mange trois œufs ɐ au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert not fid("Elle mange trois œufs а au petit déjeuner chaque matin.", "fr")["word_pass"]


def test_consistency_reads_the_trace_as_written_math_included():
    """The paper identifies the raw trace: English words inside $\\text{}$ count for consistency (the line check
    still strips the math and sees French)."""
    trace = "La réponse est simple et claire.\n" + "$\\text{the total number of apples that she has is}$ " * 3
    f = fid(trace, "fr")
    assert not f["consistency"] and f["line_pass"]
    assert fid("La réponse est simple et claire, elle a donc seize pommes.", "fr")["consistency"]


def test_word_pass_latin_rejects_non_latin_letters():
    assert not fid("Elle mange trois œufs 朝食 au petit déjeuner chaque matin.", "fr")["word_pass"]
    assert fid("Elle mange trois œufs au petit déjeuner chaque matin, ça coûte 2 €.", "fr")["word_pass"]


def test_fidelity_rates_by_hand():
    flags = [
        {"consistency": True, "line_pass": True, "word_pass": True, "code_switch": False},
        {"consistency": True, "line_pass": True, "word_pass": False, "code_switch": False},
        {"consistency": False, "line_pass": False, "word_pass": None, "code_switch": True},
        {"consistency": False, "line_pass": False, "word_pass": None, "code_switch": False},
    ]
    r = fidelity_rates(flags)
    assert r["lpr"] == 0.5 and r["wpr"] == 0.5 and r["consistency"] == 0.5 and r["code_switch"] == 0.25
    assert r["lcpr"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert fidelity_rates([])["lcpr"] == 0.0
    assert fidelity_rates(flags[2:])["wpr"] == 0.0 and fidelity_rates(flags[2:])["lcpr"] == 0.0


def test_language_sets_are_the_papers():
    assert set(TRAIN_LANGUAGES) == set("fr ja ko th pt ar en es vi zh bn sw te de".split())  # the released reward
    assert set(BENCHMARK_LANGUAGES["mgsm"]) == set("bn de en es fr ja ko ru sw te th zh".split())
    assert set(BENCHMARK_LANGUAGES["msvamp"]) == set("ar en es fr ja ko pt th vi zh".split())
    assert set(KNOWN_LANGUAGES) == set(TRAIN_LANGUAGES) | {"ru"}


def test_every_known_language_has_an_instruction_and_the_reward_set_grows_only_for_the_data():
    from adamame.language import INSTRUCTIONS, reward_languages, trace_languages

    assert set(INSTRUCTIONS) == set(KNOWN_LANGUAGES) and all("\\boxed{}" in t for t in INSTRUCTIONS.values())
    assert reward_languages({"fr", "ja", "ko", "pt", "th"}) == TRAIN_LANGUAGES  # the paper's prompts: the 14
    assert reward_languages({"fr", "ru"}) == TRAIN_LANGUAGES + ("ru",)
    assert set(trace_languages("mgsm")) == set(TRAIN_LANGUAGES) | {"ru"}
    assert set(trace_languages("msvamp")) == set(TRAIN_LANGUAGES) and trace_languages() == KNOWN_LANGUAGES


@pytest.mark.skipif(not os.path.isdir(MGSM), reason=f"MGSM data not found at {MGSM}")
def test_russian_questions_are_read_as_russian_by_the_evaluation_rule():
    from adamame.language import trace_languages

    rows = [json.loads(line) for line in open(os.path.join(MGSM, "ru.jsonl"), encoding="utf-8")][:40]
    langid = get_detector("langid", trace_languages("mgsm"))
    got = [reward_language(r["question"], detector=langid) for r in rows]
    assert got.count("ru") >= 38, got
    old = [reward_language(r["question"], detector=get_detector("langid", TRAIN_LANGUAGES)) for r in rows]
    assert "ru" not in old  # the reward's 14 alone cannot say ru


RU = ("У Джанет шестнадцать уток, которые каждый день несут яйца.\nТри яйца она съедает на завтрак, а четыре "
      "использует для выпечки.\nОстальные яйца она продаёт на рынке.")


def test_a_russian_trace_is_read_as_russian_by_the_evaluation_rule_and_not_by_the_rewards_fourteen():
    from adamame.language import trace_languages

    assert reward_language(RU, detector=get_detector("langid", trace_languages("mgsm"))) == "ru"
    assert reward_language(RU, detector=get_detector("langid", trace_languages())) == "ru"
    assert reward_language(RU, detector=get_detector("langid", TRAIN_LANGUAGES)) != "ru"
