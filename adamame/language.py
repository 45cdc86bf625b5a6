"""Reasoning-language identification: the training-time rule and the paper's language-fidelity metrics.

Why: the alignment bonus goes to rollouts whose reasoning is in the query language, and the paper is judged on how
faithfully traces stay in that language, so both must follow the paper's released code (2_rl reward, 3_eval/metrics.py)
to give numbers that stand beside the paper's.

Detectors (DETECTORS), each restricted to a language set (an unrestricted identifier mislabels short, math-heavy
text as one of ~100 unrelated languages):
    langid   the default (the design's package). It always answers for non-empty text, so a math-only prefix gets
             some language; `detect` gives None only for empty text.
    lingua   the paper's (optional: pip install lingua-language-detector). It gives None when it cannot decide.
Languages, all defined here: INSTRUCTIONS holds every language the project knows (KNOWN_LANGUAGES, 15) with the
localized instruction put before a question; TRAIN_LANGUAGES, the 14 the released reward identifies among (no `ru`);
BENCHMARK_LANGUAGES, the released evaluation's set per benchmark (the released script's mgsm set has `ko`, which
MGSM-Rev2 adds to the public MGSM's 11). A reader refuses a language outside KNOWN_LANGUAGES. `reward_languages`
gives the reward's set for a run (the 14, plus any language of the run's prompts they lack); `trace_languages` the
set evaluation identifies a trace's language among (the benchmark's and the reward's, or every known language).

Training-time rule (`reward_language`): lang(o_i) = detect(the first 500 characters of the decoded response), raw,
nothing stripped; "unknown" where the detector gives no answer; "unknown" never matches a query language.

Evaluation, per candidate trace (the text before `</think>`) and query language q, as 3_eval/metrics.py defines it:
    strip_math    display math ($$..$$, \\[..\\]), inline math ($..$, \\(..\\)), \\begin{..}..\\end{..}, \\cmd{arg} with
                  its argument, runs of digits/operators/brackets not glued to a letter or digit
    consistency   detect(trace) == q, the whole trace as written
    line pass     every line that is non-empty after strip_math is detected as q or as no language
    word pass     q in a non-Latin script (ar bn hi ja ko ru te th zh): no run of >= 2 ASCII letters in
                  strip_math(trace); q in a Latin script (de en es fr id it pt sw tr vi): every letter is Latin
                  (<= U+024F or U+1E00-U+1EFF); other q: passes
    code switch   lingua's detect_multiple_languages_of(strip_math(trace)) finds >= 2 languages
With langid, which never abstains and cannot segment a text, two of these can only be analogues: a line is "no
language" when it has fewer than MIN_LETTERS letters, and code switch means >= 2 languages among the line check's
decisions for the trace's lines (for a one-line trace, among its sentences, read the same way).

Imports: langid; lingua (optional).
"""

import re
from functools import lru_cache
from importlib.metadata import version

DETECTORS = ("langid", "lingua")
# The instruction before every question (the prompt is instruction + "\n\n" + question). fr ja ko pt th are the
# released code's wording (0_data/sft_data/5_add_instructions.py); the others are ours, written to say the same.
INSTRUCTIONS = {
    "fr": "Veuillez raisonner étape par étape et placer votre réponse finale dans \\boxed{}.",
    "ja": "段階的に考えて、最終的な答えを \\boxed{} の中に入れてください。",
    "ko": "단계별로 추론하고, 최종 답을 \\boxed{} 안에 넣어주세요.",
    "pt": "Por favor, justifique passo a passo e coloque a sua resposta final dentro de \\boxed{}.",
    "th": "กรุณาให้เหตุผลทีละขั้นตอน และใส่คำตอบสุดท้ายของคุณไว้ภายใน \\boxed{}",
    # ours from here on
    "en": "Please reason step by step, and put your final answer within \\boxed{}.",
    "ar": "يرجى التفكير خطوة بخطوة، ووضع إجابتك النهائية داخل \\boxed{}.",
    "bn": "অনুগ্রহ করে ধাপে ধাপে যুক্তি দেখান, এবং আপনার চূড়ান্ত উত্তরের চারপাশে \\boxed{} ব্যবহার করুন।",
    "de": "Bitte denken Sie Schritt für Schritt nach und schreiben Sie Ihre endgültige Antwort in \\boxed{}.",
    "es": "Por favor, razona paso a paso y coloca tu respuesta final dentro de \\boxed{}.",
    "ru": "Пожалуйста, рассуждайте шаг за шагом и поместите свой окончательный ответ в \\boxed{}.",
    "sw": "Tafadhali toa hoja hatua kwa hatua, na weka jibu lako la mwisho ndani ya \\boxed{}.",
    "te": "దయచేసి దశలవారీగా ఆలోచించండి, మరియు మీ తుది సమాధానాన్ని \\boxed{} లో వ్రాయండి.",
    "vi": "Hãy suy luận từng bước và đặt câu trả lời cuối cùng của bạn trong \\boxed{}.",
    "zh": "请逐步推理，并将最终答案写在 \\boxed{} 中。",
}
KNOWN_LANGUAGES = tuple(sorted(INSTRUCTIONS))
TRAIN_LANGUAGES = ("fr", "ja", "ko", "th", "pt", "ar", "en", "es", "vi", "zh", "bn", "sw", "te", "de")
BENCHMARK_LANGUAGES = {"mgsm": ("bn", "de", "en", "es", "fr", "ja", "ko", "ru", "sw", "te", "th", "zh"),
                       "msvamp": ("ar", "en", "es", "fr", "ja", "ko", "pt", "th", "vi", "zh")}
assert set(TRAIN_LANGUAGES).union(*BENCHMARK_LANGUAGES.values()) == set(KNOWN_LANGUAGES)
LATIN_SCRIPT = {"de", "en", "es", "fr", "id", "it", "pt", "sw", "tr", "vi"}
NON_LATIN_SCRIPT = {"ar", "bn", "hi", "ja", "ko", "ru", "te", "th", "zh"}
PREFIX_CHARS = 500  # the released reward identifies the first 500 characters of the response
MIN_LETTERS = 8  # langid's stand-in for "no language": a line with fewer letters

_MATH = [
    (re.compile(r"\$\$.*?\$\$", re.S), " "),
    (re.compile(r"\\\[.*?\\\]", re.S), " "),
    (re.compile(r"\$[^\$]+?\$"), " "),
    (re.compile(r"\\\(.*?\\\)", re.S), " "),
    (re.compile(r"\\begin\{[^}]+\}.*?\\end\{[^}]+\}", re.S), " "),
    (re.compile(r"\\[a-zA-Z]+\{[^}]*\}"), " "),
    (re.compile(r"(?<!\w)[\d\+\-\*\/\=\^\.\,\(\)\[\]\{\}\%\_]+(?!\w)"), " "),
]


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_response(response: str, paper: bool = False) -> tuple[str, str]:
    """(trace, answer) around the first `</think>`; `<think>` markers are removed from the trace.

    Without `</think>`: the whole response is the trace (the reward's reading: a response cut off while
    thinking), or with `paper=True` the whole response is the answer and the trace is empty (the paper's
    evaluation script).
    """
    close = response.find(THINK_CLOSE)
    if close < 0:
        trace, answer = ("", response) if paper else (response, "")
    else:
        trace, answer = response[:close], response[close + len(THINK_CLOSE):]
    if paper:
        trace = trace.replace("<think>\n", "").replace(THINK_OPEN, "")
    else:
        open_ = trace.rfind(THINK_OPEN)
        if open_ >= 0:
            trace = trace[open_ + len(THINK_OPEN):]
    return trace.strip(), answer.strip()


def strip_math(text: str) -> str:
    """The paper's math removal (3_eval/metrics.py), rule for rule; the result is stripped of outer whitespace."""
    for pat, rep in _MATH:
        text = pat.sub(rep, text)
    return text.strip()


def _letters(text: str) -> int:
    return sum(1 for c in text if c.isalpha())


class Detector:
    """A language identifier restricted to `languages`: detect(text) -> ISO 639-1 code, or None for no answer."""
    name = "?"

    def __init__(self, languages):
        self.languages = tuple(languages)

    def detect(self, text: str):
        raise NotImplementedError

    def line_language(self, text: str):
        """A stripped line's language for the line check; None passes."""
        return self.detect(text)

    def languages_in(self, text: str, line_languages=None) -> list:
        """The languages of the parts of a math-stripped trace, for code switching; line_languages: the line check's
        decisions for its lines (a detector that cannot segment a text may use them)."""
        raise NotImplementedError


class Langid(Detector):
    name = "langid"

    def __init__(self, languages):
        super().__init__(languages)
        import langid.langid  # 0.2 s to import: only when the identifier is built (rewards.py and answer.py need none)

        self.ident = langid.langid.LanguageIdentifier.from_modelstring(langid.langid.model, norm_probs=False)
        unknown = [c for c in self.languages if c not in self.ident.nb_classes]
        if unknown:
            raise ValueError(f"unknown language code {unknown[0]!r} (langid knows {len(self.ident.nb_classes)} "
                             f"ISO 639-1 codes)")
        self.ident.set_languages(list(self.languages))
        self.version = f"langid {getattr(langid, '__version__', '1.1.6')}"

    def detect(self, text):
        return self.ident.classify(text)[0] if text.strip() else None

    def line_language(self, text):
        return self.detect(text) if _letters(text) >= MIN_LETTERS else None

    def languages_in(self, text, line_languages=None):
        if line_languages is not None and len(line_languages) >= 2:  # the lines, as the line check read them
            return [lang for lang in line_languages if lang is not None]
        parts = [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s.strip()]  # one line: its sentences
        return [lang for lang in map(self.line_language, parts) if lang is not None]


class Lingua(Detector):
    name = "lingua"

    def __init__(self, languages):
        super().__init__(languages)
        try:
            import lingua  # optional (pip install lingua-language-detector): only for --lang-id lingua
        except ImportError:
            raise ValueError("--lang-id lingua needs the lingua package, which is not installed "
                             "(pip install lingua-language-detector)") from None
        picked = []
        for code in self.languages:
            try:
                picked.append(lingua.Language.from_iso_code_639_1(getattr(lingua.IsoCode639_1, code.upper())))
            except (AttributeError, ValueError):
                raise ValueError(f"unknown language code {code!r} for lingua") from None
        self.detector = lingua.LanguageDetectorBuilder.from_languages(*picked).build()
        self.version = f"lingua-language-detector {version('lingua-language-detector')}"

    @staticmethod
    def _code(lang):
        return lang.iso_code_639_1.name.lower() if lang is not None else None

    def detect(self, text):
        return self._code(self.detector.detect_language_of(text)) if text else None

    def languages_in(self, text, line_languages=None):
        try:
            return [self._code(r.language) for r in self.detector.detect_multiple_languages_of(text)] if text else []
        except Exception:  # noqa: BLE001  (the paper's script counts a failure as no code switching)
            return []


@lru_cache(maxsize=None)
def get_detector(name: str = "langid", languages: tuple = TRAIN_LANGUAGES) -> Detector:
    """The detector `name` restricted to `languages` (built once per pair: lingua's models take seconds)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown language identifier {name!r} (choose from {', '.join(DETECTORS)})")
    return (Langid if name == "langid" else Lingua)(tuple(languages))


def reward_languages(query_languages=()) -> tuple:
    """The reward's identifier set for a run: the released 14, then any language of the run's prompts they lack (so
    its bonus can be earned; the paper's own prompts add none)."""
    return TRAIN_LANGUAGES + tuple(sorted(set(query_languages) - set(TRAIN_LANGUAGES)))


def trace_languages(benchmark: str | None = None) -> tuple:
    """The set evaluation reads a trace's language among (lang_match, trace_lang): the benchmark's plus the reward's,
    so a faithful trace in any benchmark language can match its query; every known language without a benchmark."""
    if benchmark is None:
        return KNOWN_LANGUAGES
    return tuple(sorted(set(BENCHMARK_LANGUAGES[benchmark]) | set(TRAIN_LANGUAGES)))


def reward_language(response: str, mode: str = "prefix", detector: Detector | None = None) -> str:
    """lang(o_i) for the reward: the detector on the first 500 characters of the decoded response, raw (the paper's
    training-time rule, mode="prefix"), or on the whole reasoning trace (mode="trace"); "unknown" for no answer."""
    detector = detector or get_detector()
    if mode == "prefix":
        text = response[:PREFIX_CHARS]
    elif mode == "trace":
        text = split_response(response)[0]
    else:
        raise ValueError(f"unknown language mode {mode!r} (use 'prefix' or 'trace')")
    return detector.detect(text) or "unknown"


def _is_latin_letter(c: str) -> bool:
    cp = ord(c)
    return not c.isalpha() or cp <= 0x024F or 0x1E00 <= cp <= 0x1EFF


def word_pass(trace: str, query_lang: str) -> bool:
    text = strip_math(trace)
    if query_lang in NON_LATIN_SCRIPT:
        return re.search(r"[a-zA-Z]{2,}", text) is None
    if query_lang in LATIN_SCRIPT:
        return all(_is_latin_letter(c) for c in text)
    return True


def fidelity(trace: str, query_lang: str, detector: Detector) -> dict:
    """Per-candidate flags (see the module docstring): consistency, line_pass, word_pass (None when the line check
    fails: the paper scores words only of line-passing traces), code_switch, and cs_languages (sorted)."""
    line_langs = [detector.line_language(clean) for clean in map(strip_math, trace.split("\n")) if clean]
    line_pass = all(lang is None or lang == query_lang for lang in line_langs)
    stripped = strip_math(trace)
    cs_languages = sorted(set(detector.languages_in(stripped, line_langs))) if stripped else []
    return {
        "consistency": detector.detect(trace) == query_lang,
        "line_pass": line_pass,
        "word_pass": word_pass(trace, query_lang) if line_pass else None,
        "code_switch": len(cs_languages) >= 2,
        "cs_languages": cs_languages,
    }


def detect_language(text: str, languages=KNOWN_LANGUAGES, detector: str = "langid") -> str:
    """ISO 639-1 code of `text`, raw, among `languages`; "unknown" when the detector gives no answer."""
    return get_detector(detector, tuple(languages)).detect(text) or "unknown"


def fidelity_rates(flags: list) -> dict:
    """Consistency, LPR, WPR (over the line-passing candidates), LCPR and code-switching rate of `fidelity` flags
    pooled over candidates (scoring.py averages per question first, as the paper's script does)."""
    n = len(flags)
    if n == 0:
        return {"consistency": 0.0, "lpr": 0.0, "wpr": 0.0, "lcpr": 0.0, "code_switch": 0.0}
    passed = [f for f in flags if f["line_pass"]]
    lpr = len(passed) / n
    wpr = sum(bool(f["word_pass"]) for f in passed) / len(passed) if passed else 0.0
    return {"consistency": sum(f["consistency"] for f in flags) / n, "lpr": lpr, "wpr": wpr,
            "lcpr": 2 * lpr * wpr / (lpr + wpr) if lpr + wpr > 0 else 0.0,
            "code_switch": sum(f["code_switch"] for f in flags) / n}
