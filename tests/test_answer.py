import time

import pytest

from adamame.answer import check, require_verifier, reward_check
from adamame.answer import accuracy, extract_answer, verify
from adamame.language import split_response

# ---- extraction ----


def test_split_at_close_think():
    assert split_response("reasoning here\n</think>\nThe answer is \\boxed{5}.") == ("reasoning here",
                                                                                    "The answer is \\boxed{5}.")


def test_split_without_close_think_is_all_trace():
    assert split_response("still thinking \\boxed{3}") == ("still thinking \\boxed{3}", "")


def test_split_drops_text_before_open_think():
    assert split_response("preamble <think>trace</think> answer") == ("trace", "answer")


def test_boxed_with_nested_braces():
    assert extract_answer("</think> so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_boxed_without_braces_and_fbox():
    assert extract_answer("</think> \\boxed 5$") == "5"
    assert extract_answer("</think> \\fbox{12}") == "12"


def test_answer_part_preferred_over_trace():
    assert extract_answer("maybe \\boxed{3}\n</think>\nfinal \\boxed{4}") == "4"


def test_falls_back_to_trace_when_answer_has_no_box():
    assert extract_answer("so \\boxed{3}\n</think>\nThe answer is three.") == "3"


def test_the_boxes_of_the_answer_part_form_a_set_and_a_hedge_is_not_the_answer():
    assert extract_answer("\\boxed{1} no wait \\boxed{2}") == "1, 2"  # no </think>: the whole text is the answer
    assert extract_answer("<think> \\boxed{1} no wait \\boxed{2} </think> done") == "2"  # nothing after: the trace's last
    assert extract_answer("</think> \\boxed{1} and \\boxed{2}") == "1, 2"
    assert extract_answer("</think> \\boxed{5}, so again \\boxed{5}") == "5"  # repeated: one answer
    assert accuracy("</think> \\boxed{1} no wait \\boxed{2}", "2") == 0.0  # two answers are not the answer 2
    assert accuracy("\\boxed{40}, non: \\boxed{42}", "42") == 0.0
    assert accuracy("\\boxed{42} donc \\boxed{42.0}", "42") == 1.0  # equal boxes are one answer


# Math-Verify's own regression cases (tests/test_open_thoughts.py, tests/test_numina_cases.py) where an answer is a set
# written as several boxes or as a list, with the verdict Math-Verify's tests expect.
@pytest.mark.parametrize("gold,response", [
    ("$$(2, 2), (6, 2)$$", "$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$"),
    ("$${1,2,3}$$", "\\boxed{1},\\boxed{2},\\boxed{3}"),
    ("$${1,2,3}$$", "\\boxed{1} and \\boxed{2} and \\boxed{3}"),
    ("$$k = 45, n = 2$$", "$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$"),
    ("\\boxed{x = -5,\\ p = \\frac{14}{3}} ", "$\\boxed{-5, \\frac{14}{3}}$"),
    ("$x_{1}=\\frac{1}{2}+\\frac{31\\sqrt{5}}{216},\\quadx_{2}=\\frac{1}{2}-\\frac{31\\sqrt{5}}{216}$",
     "$\\boxed{\\dfrac{108 + 31\\sqrt{5}}{216}} \\quad \\text{and} \\quad \\boxed{\\dfrac{108 - 31\\sqrt{5}}{216}}$"),
])
def test_math_verify_set_answers_are_read_as_sets(gold, response):
    assert accuracy(response, gold) == 1.0
    assert accuracy(response.replace("2)}", "3)}").replace("{3}", "{4}").replace("= 2}", "= 3}").replace("{14}", "{15}")
                    .replace("108 - ", "107 - "), gold) == 0.0  # one element changed: not equal


def test_no_box_gives_none():
    assert extract_answer("</think> The answer is 42.") is None


# ---- verification: accepted forms ----

@pytest.mark.parametrize("pred,gold", [
    ("42", "42"), ("42.0", "42"), ("-7", "-7"), ("−7", "-7"),
    ("1,000", "1000"), ("1 000", "1000"), ("1\u202f000", "1000"), ("1.000.000", "1000000"), ("1.000", "1000"),
    ("12,345.5", "12345.5"), ("1.234,5", "1234.5"), ("2,5", "2.5"),
    ("\\frac{3}{4}", "0.75"), ("\\dfrac{3}{4}", "3/4"), ("\\tfrac12", "0.5"), ("-\\frac{1}{3}", "-1/3"),
    ("3/4", "\\frac{3}{4}"),
    ("25\\%", "25"), ("25%", "0.25"),
    ("\\text{18 dollars}", "18"), ("18 \\text{ dollars}", "18"), ("\\$18", "18"), ("$18$", "18"), ("18 €", "18"),
    ("18 cm^2", "18"), ("90^\\circ", "90"), ("90°", "90"), ("x = 5", "5"), ("5 ドル", "5"),
    ("2^{10}", "1024"), ("\\sqrt{8}", "2\\sqrt{2}"), ("\\sqrt[3]{27}", "3"), ("2\\pi", "6.2831853"),
    ("\\pi", "3.14159265"), ("5m^{2}", "5"), ("\\frac{\\sqrt{3}}{2}", "0.8660254"), ("3 \\times 4", "12"), ("3 \\cdot 4", "12"),
    ("\\left(1, 2\\right)", "(1,2)"), ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"), ("2, 3", "3, 2"), ("(0.5, 1)", "(1/2, 1)"),
    ("\\boxed{7}", "7"),
])
def test_equal_forms_verify(pred, gold):
    assert verify(pred, gold), (pred, gold)


# ---- verification: must be False ----

@pytest.mark.parametrize("pred,gold", [
    ("41", "42"), ("-42", "42"), ("42", "-42"), ("", "42"), ("   ", "42"), ("0.33", "1/3"), ("(1, 2)", "(2, 1)"),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}"), ("3.14", "\\pi"), ("x", "5"), ("five", "5"), ("1/0", "1"), ("12", "1,2"),
])
def test_unequal_forms_do_not_verify(pred, gold):
    assert not verify(pred, gold), (pred, gold)


# ---- no false positive from joining numbers; sets must match as a whole ----

@pytest.mark.parametrize("response,gold", [
    ("</think> \\boxed{6 or 7}", "42"), ("</think> \\boxed{3 and 4}", "12"),
    ("</think> \\boxed{10 minutes 30 seconds}", "300"), ("</think> \\boxed{x=5 or x=7}", "7"),
    ("</think> \\boxed{6 \\text{ or } 7}", "42"), ("</think> \\boxed{6, 7}", "42"), ("</think> \\boxed{3 4}", "34"),
    ("</think> \\boxed{3 et 4}", "12"), ("</think> \\boxed{3 または 4}", "3"), ("</think> \\boxed{1}\\boxed{2}", "2"),
    ("</think> \\boxed{(7,11)}", "(7,11), (11,7)"), ("</think> \\boxed{(2,5)}", "[2,5)"),
    ("</think> \\boxed{5}", "2xy"), ("</think> \\boxed{2 \\sin a \\cos b}", "\\sin(a+b) - \\sin(a-b)"),
    ("</think> \\boxed{\\sqrt{x^2}}", "x"), ("</think> \\boxed{1 \\pm \\sqrt{2}}", "1+\\sqrt{2}"),
])
def test_answers_that_only_look_right_are_wrong(response, gold):
    assert accuracy(response, gold) == 0.0, (response, gold)


@pytest.mark.parametrize("pred,gold", [
    ("(0,1)", "[0,1]"), ("(-1,1)", "[-1,1]"), ("(1,100)", "[1,100]"), ("\\{0,1\\}", "[0,1]"), ("0.1", "[0,1]"),
    ("\\frac{17}{5}", "(3,4)"), ("[2,3]", "2.3"), ("(1,100)", "1100"),
    ("x \\neq 42", "42"), ("x \\ne 42", "42"), ("x \\not= 42", "42"), ("x \\le 42", "42"), ("x \\geq 42", "42"),
    ("x < 42", "42"), ("x ≠ 42", "42"), ("\\neg 42", "42"), ("\\lnot 42", "42"), ("\\text{not } 42", "42"),
    ("\\text{pas } 42", "42"), ("1000000.5 \\text{ dollars}", "1000000"), ("1,000,000.5", "1000000"),
    ("\\frac{100000001}{10}", "1000000"), ("a=2, b=3", "a=3, b=2"), ("{6}{7}", "42"), ("{6}{7}", "67"),
])
def test_brackets_relations_negations_and_near_integers_are_not_the_answer(pred, gold):
    assert not verify(pred, gold), (pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("(1,100)", "(1, 100)"), ("[1,100]", "[1,100]"), ("a=2, b=3", "b=3, a=2"), ("5", "x=5"), ("x=5", "5"),
    ("x = 5 or x = 7", "x=7, x=5"), ("0.333333", "1/3"), ("1,000", "1000"), ("2,5", "2.5"), ("2,5", "2, 5"),
])
def test_the_same_forms_written_right_still_verify(pred, gold):
    assert verify(pred, gold), (pred, gold)


def test_huge_sets_and_unclosed_boxes_stay_bounded():
    t0 = time.perf_counter()
    many = ", ".join("%d.%03d" % (i % 999 + 1, i % 1000) for i in range(300))[:1990]
    assert check(many, "\\{1,2,3\\}") == (False, False)
    assert not verify(", ".join(str(i) for i in range(400)), "\\{1,2,3\\}")
    assert accuracy("</think>" + "\\boxed{" * 200_000, "1") == 0.0
    assert accuracy("</think>" + "\\boxed{1} " * 50_000, "1") == 1.0  # one answer, repeated
    assert time.perf_counter() - t0 < 5.0


def test_the_checker_calls_no_evaluator_of_text():
    """No eval/exec/compile, and none of sympy's string parsers, anywhere in answer.py (however imported)."""
    import ast
    import inspect

    import adamame.answer as answer

    tree = ast.parse(inspect.getsource(answer))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    parsers = {"sympify", "parse_expr", "parse_latex", "lambdify", "S", "simplify_logic"}
    assert not names & {"eval", "exec", "compile", "__import__"}
    assert not (names | attrs | imported) & parsers


# ---- forms Math-Verify accepts (golds written as the MATH and DAPO data write them) ----

@pytest.mark.parametrize("response,gold", [
    ("</think> \\boxed{\\text{(C)}}", "C"), ("</think> \\boxed{\\textbf{(C)}}", "\\text{(C)}"),
    ("</think> \\boxed{11,\\!111,\\!111,\\!100}", "11111111100"), ("</think> \\boxed{14{,}916}", "14916"),
    ("</think> \\boxed{1}\\boxed{2}", "1,2"), ("</think> \\boxed{1,2}", "\\boxed{1}\\boxed{2}"),
    ("</think> \\boxed{(7,11), (11,7)}", "(11,7),(7,11)"), ("</think> \\boxed{1 \\pm \\sqrt{2}}", "1-\\sqrt{2}, 1+\\sqrt{2}"),
    ("</think> \\boxed{\\frac{-1 \\pm \\sqrt{5}}{2}}", "\\frac{-1+\\sqrt{5}}{2}, \\frac{-1-\\sqrt{5}}{2}"),
    ("</think> \\boxed{[2, 5)}", "[2,5)"), ("</think> \\boxed{(-\\infty, 1) \\cup (2, \\infty)}", "(2,\\infty)\\cup(-\\infty,1)"),
    ("</think> \\boxed{\\tfrac{3}{4}}", "\\frac34"), ("</think> \\boxed{2 \\sin b \\cos a}", "\\sin(a+b) - \\sin(a-b)"),
    ("</think> \\boxed{(x+1)^2}", "x^2+2x+1"), ("</think> \\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}"),
    ("</think> \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("</think> \\boxed{\\text{Evelyn}}", "\\text{Evelyn}"), ("</think> \\boxed{90^\\circ}", "90^\\circ"),
    ("</think> \\boxed{12\\text{ and }13}", "12 \\text{ and } 13"), ("</think> \\boxed{2-2p}", "2-2p"),
    ("</think> \\boxed{k = \\frac{1}{3}}", "\\frac13"), ("</think> \\boxed{3+4i}", "4i+3"),
    ("</think> La réponse est \\boxed{42 個}", "42"), ("</think> \\boxed{2,5}", "2.5"), ("</think> \\boxed{1 000}", "1000"),
])
def test_forms_math_verify_accepts_are_accepted(response, gold):
    assert accuracy(response, gold) == 1.0, (response, gold)


def test_verify_timeouts_are_reported():
    ok, timed_out = check("2 \\sin b \\cos a", "\\sin(a+b) - \\sin(a-b)", timeout=0.0)
    assert not ok and timed_out
    assert check("2 \\sin b \\cos a", "\\sin(a+b) - \\sin(a-b)") == (True, False)
    assert check("41", "42") == (False, False)


def test_math_verify_is_optional_and_named_when_missing():
    try:
        import math_verify  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install math-verify"):
            require_verifier("math-verify")
    else:
        require_verifier("math-verify")
        assert reward_check("</think> \\boxed{\\frac{1}{2}}", "0.5", "math-verify") == (1.0, False)
    with pytest.raises(ValueError, match="unknown verifier"):
        require_verifier("sympy")


def test_empty_box_is_wrong():
    assert accuracy("</think> \\boxed{}", "0") == 0.0


def test_answer_only_in_unrelated_place_is_wrong():
    assert accuracy("I first get 42 apples ... \n</think>\nso \\boxed{41}", "42") == 0.0
    assert accuracy("I first get 42 apples, The answer is 42", "42") == 0.0


def test_accuracy_on_a_whole_response():
    assert accuracy("Janet a 16 œufs ... \n</think>\nLa réponse est \\boxed{18}.", "18") == 1.0


# ---- adversarial input: bounded time, nothing executed, never raises ----

ADVERSARIAL = [
    "1" * 1_000_000,
    "a" * 1_000_000,
    "{" * 10_000 + "1" + "}" * 10_000,
    "(" * 10_000 + "1" + ")" * 10_000,
    "\\frac{" * 5_000 + "1" + "}{2}" * 5_000,
    "__import__('os').system('touch /tmp/adamame_pwned')",
    "9^9^9^9",
    "10^{10^{10}}",
    "2^{999999999}",
    "\\sqrt{" * 300 + "2" + "}" * 300,
    "(" * 50 + "1" * 199 + ")" * 50 + "^" + "9" * 199,
    "\x00\ud800\U0010ffff",
    "\\sqrt{" * 100 + "2" + "}" * 100,
    "(" * 500 + "2" + ")" * 500,
    "2^" * 600 + "2",
    "1/" * 10_000 + "1",
    "-" * 100_000 + "1",
    "\\sin(" * 5000 + "x" + ")" * 5000,
    "x^{x^{x^{x^{x^{x^{x^{x^{x}}}}}}}}",
    "e^{e^{e^{e^{e^{e^{e^{99}}}}}}}",
    "\\boxed{" * 10_000 + "1" + "}" * 10_000,
    "open('/etc/passwd').read()",
    "(lambda: __import__('os').system('touch /tmp/adamame_pwned'))()",
    "1,2" * 5000,
    "\\pm " * 1000 + "1",
    "x" * 2000,
    "(" + "x+" * 600 + "1)^{99}",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_input_is_fast_safe_and_false(text, monkeypatch):
    import builtins
    import os

    import sympy

    calls = []
    for mod, name in [(builtins, "eval"), (builtins, "exec"), (os, "system"), (sympy, "sympify"),
                      (sympy, "parse_expr")]:
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: calls.append(_n))
    t0 = time.perf_counter()
    for gold in ("1", "0", "x"):
        assert verify(text, gold, timeout=0.5) is False
        accuracy(f"</think> \\boxed{{{text}}}", gold)
    assert time.perf_counter() - t0 < 5.0  # generous: the point is "no minutes-long hang", not a benchmark
    assert calls == []
    assert not os.path.exists("/tmp/adamame_pwned")


def test_never_raises_on_odd_types_and_values():
    for p, g in [(None, "1"), ("1", None), ("nan", "nan"), ("inf", "inf"), ("1e999999", "1"), ("0^{-1}", "1"),
                 ("\\sqrt{-4}", "2"), ("\\frac{}{}", "1"), ("}{", "1"), ("\\boxed{", "1")]:
        assert verify(p, g) in (True, False)


def test_time_limit_is_enforced():
    assert verify("\\frac{1}{3} + \\sqrt{2}", "\\sqrt{2} + 1/3")
    assert not verify("\\frac{1}{3} + \\sqrt{2}", "\\sqrt{2} + 1/3", timeout=0.0)
