"""Reasoning-language identification and the paper's language-fidelity metrics.

Why: the alignment bonus goes to rollouts whose reasoning is in the query language, and the paper is judged on
how faithfully traces stay in that language. Both use `langid`, restricted to the languages in play (an
unrestricted identifier mislabels short math-heavy text as one of ~100 unrelated languages), on text with the
math removed (formulas, LaTeX commands, numbers and operators carry no language).

Per response (trace = reasoning before `</think>`, q = query language), as the paper's evaluation script defines
them (it uses lingua; this module langid, the design's choice):
    consistency   the whole trace, as written (math included), is identified as q
    line pass     every non-empty line of the trace, math removed, is identified as q or carries no language
                  (fewer than MIN_LETTERS letters after math removal)
    word pass     q in a non-Latin script: no run of >= 2 ASCII letters outside math;
                  q in a Latin script: every letter outside math is Latin (code point <= U+024F, or in
                  U+1E00-U+1EFF, Latin Extended Additional)
    code switch   two or more languages among the trace's lines (its sentences when it is one line)
Over a set of responses:
    LPR  = mean(line pass)
    WPR  = mean(word pass over the responses that pass the line check)  (0 when none does)
    LCPR = 2 * LPR * WPR / (LPR + WPR)                                   (harmonic mean; 0 when both are 0)

Imports: langid.
"""

import re
from functools import lru_cache

EVAL_LANGUAGES = ("en", "fr", "ja", "ko", "th", "bn", "de", "es", "ru", "sw", "te", "zh")
DEFAULT_LANGUAGES = EVAL_LANGUAGES + ("pt",)
TRAIN_LANGUAGES = ("fr", "ja", "ko", "pt", "th")
LATIN_SCRIPT = {"en", "fr", "de", "es", "pt", "sw"}
PREFIX_CHARS = 500  # the released code identified the first 500 characters of the response
MIN_LETTERS = 8  # fewer letters (after math removal) carry no language: langid guesses on short phrases

_MATH = [
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"\$[^$\n]*\$"),
    re.compile(r"\\\(.*?\\\)", re.S),
    re.compile(r"\\\[.*?\\\]", re.S),
    re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S),
    re.compile(r"\\(?:boxed|fbox)\s*\{[^{}]*\}"),
    re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|operatorname)(?=\s*\{)"),  # keep the words inside \text{}
    re.compile(r"\\[a-zA-Z]+"),
    re.compile(r"[A-Za-z]?\d+(?:[.,]\d+)*[A-Za-z]?"),  # 3x, x2, 1,000.5 (single letters next to digits are math)
    re.compile(r"[\\{}_^=+\-*/<>|()\[\]%$&#~`]"),
]


def strip_math(text: str) -> str:
    """The text with formulas, LaTeX commands, numbers and operators removed; whitespace collapsed per line."""
    for pat in _MATH:
        text = pat.sub(" ", text)
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


def _letters(text: str) -> int:
    return sum(1 for c in text if c.isalpha())


@lru_cache(maxsize=None)
def _identifier(languages: tuple):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
    unknown = [code for code in languages if code not in ident.nb_classes]
    if unknown:
        raise ValueError(f"unknown language code {unknown[0]!r} (langid knows {len(ident.nb_classes)} ISO 639-1 codes)")
    ident.set_languages(list(languages))
    return ident


def _classify(clean: str, languages) -> str:
    if _letters(clean) < MIN_LETTERS:
        return "unknown"
    return _identifier(tuple(languages or DEFAULT_LANGUAGES)).classify(clean)[0]


def detect_language(text: str, languages=None) -> str:
    """ISO 639-1 code of `text` with math removed, among `languages` (default: the 12 evaluation languages
    plus pt); "unknown" when fewer than MIN_LETTERS letters remain."""
    _identifier(tuple(languages or DEFAULT_LANGUAGES))  # validates the codes even for math-only text
    return _classify(strip_math(text), languages)


def reward_language(response: str, mode: str = "prefix", languages=None) -> str:
    """lang(o_i) for the reward: the first 500 characters of the response (the paper's training-time rule,
    mode="prefix") or the whole reasoning trace (mode="trace")."""
    from adamame.answer import split_response

    if mode == "prefix":
        return detect_language(response[:PREFIX_CHARS], languages)
    if mode == "trace":
        return detect_language(split_response(response)[0], languages)
    raise ValueError(f"unknown language mode {mode!r} (use 'prefix' or 'trace')")


def _is_latin_letter(c: str) -> bool:
    cp = ord(c)
    return cp <= 0x024F or 0x1E00 <= cp <= 0x1EFF


def _segments(trace: str) -> list:
    lines = [ln for ln in trace.split("\n") if ln.strip()]
    if len(lines) >= 2:
        return lines
    return [s for s in re.split(r"(?<=[.!?。！？])\s*", trace) if s.strip()]


def fidelity(trace: str, query_lang: str, languages=None) -> dict:
    """Per-response flags: consistency, line_pass, word_pass, code_switch (see the module docstring)."""
    languages = tuple(languages or DEFAULT_LANGUAGES)
    if query_lang not in languages:
        raise ValueError(f"unknown language code {query_lang!r} (known: {', '.join(languages)})")
    clean = strip_math(trace)
    line_langs = [_classify(strip_math(ln), languages) for ln in trace.split("\n") if ln.strip()]
    line_pass = all(lang in (query_lang, "unknown") for lang in line_langs)
    seg_langs = line_langs if len(line_langs) >= 2 else [_classify(strip_math(s), languages) for s in _segments(trace)]
    code_switch = len({lang for lang in seg_langs if lang != "unknown"}) >= 2
    if query_lang in LATIN_SCRIPT:
        word_pass = all(_is_latin_letter(c) for c in clean if c.isalpha())
    else:
        word_pass = re.search(r"[A-Za-z]{2,}", clean) is None
    return {
        "consistency": _classify(trace, languages) == query_lang,
        "line_pass": line_pass,
        "word_pass": word_pass,
        "code_switch": code_switch,
    }


def fidelity_rates(flags: list) -> dict:
    """Aggregate per-response `fidelity` dicts into consistency, LPR, WPR, LCPR and code-switching rate."""
    n = len(flags)
    if n == 0:
        return {"consistency": 0.0, "lpr": 0.0, "wpr": 0.0, "lcpr": 0.0, "code_switch": 0.0}
    passed = [f for f in flags if f["line_pass"]]
    lpr = len(passed) / n
    wpr = sum(f["word_pass"] for f in passed) / len(passed) if passed else 0.0
    lcpr = 2 * lpr * wpr / (lpr + wpr) if lpr + wpr > 0 else 0.0
    return {
        "consistency": sum(f["consistency"] for f in flags) / n,
        "lpr": lpr,
        "wpr": wpr,
        "lcpr": lcpr,
        "code_switch": sum(f["code_switch"] for f in flags) / n,
    }
