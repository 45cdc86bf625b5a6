"""The paper's evaluation metrics: accuracy (pass@1, pass@k), language fidelity (consistency, LPR, WPR, LCPR),
code-switching and token use, per language and averaged over in-domain and out-of-domain languages.

Why: the paper's claims are a three-way trade-off (accuracy, fidelity, tokens), and users compare checkpoints, and
generations from other engines, on exactly these numbers, so the definitions are those of the paper's evaluation
script (3_eval/metrics.py of the released code), and `paper_rows` reproduces that script's CSV cell for cell.

The identifier is evaluate.py's `--lang-id` restricted to `--benchmark`'s language set (mgsm: bn de en es fr ja ko ru
sw te th zh; msvamp: ar en es fr ja ko pt th vi zh; without --benchmark the 15 languages of this project); math
removal (`strip_math`) is the script's, as adamame/language.py writes it out.

Per candidate: split at the first `</think>` into trace and answer (no `</think>`: an empty trace, the whole text is
the answer; `<think>` markers dropped). correct = the first `\\boxed{}` of the answer part verifies against the
gold answer, or the first `\\boxed{}` of the trace does: with `--verifier math-verify`, Math-Verify's
`verify(parse(gold), parse(box))`, else the built-in checker (adamame/answer.py). consistency (the whole raw trace is
identified as the query language), line_pass (every line non-empty after math removal is the query language or no
language), word_pass, code_switch as in adamame/language.py, with the evaluation's detector; trace_lang: the
training-time rule (the first 500 characters) over `trace_languages` (the benchmark's languages and the reward's 14,
all 15 without --benchmark, so a faithful trace in any benchmark language, `ru` included, can match), and
lang_match = (trace_lang is the query language); tokens = characters / 4 (the paper's measure); model_tokens = the
tokenizer's count, when known.
Per question with n candidates of which c are correct:
    pass@1 = c / n,   pass@k = 1 - C(n - c, k) / C(n, k)     (unbiased; k = n: at least one of the k is correct)
and the mean over its candidates of every other flag (pass@1 as c / n: lower variance than the script's first
candidate, same expectation; the script's is in paper_summary.csv). Per language, the mean over questions, except
    WPR  = mean over questions that have a line-passing candidate of the mean word_pass of those candidates
    LCPR = 2 LPR WPR / (LPR + WPR)
    tokens_correct = mean tokens over the correct candidates
    acc_query / acc_english / acc_other = accuracy of the candidates whose trace_lang is the query language /
        English / anything else, pooled over candidates (n_query, n_english, n_other count them): it tells a
        model that prefers English from one that is less able in the query language.
in_domain / out_of_domain: the unweighted mean of the per-language values over the languages present (counts
summed); in-domain are the training languages fr ja ko pt th.

With langid (the default) every metric is defined the same except two analogues, since langid never abstains and
cannot segment a text: for line_pass a line is "no language" when it has fewer than 8 letters (lingua abstains),
and code_switch means >= 2 languages among the stripped trace's lines, each read as for line_pass (sentences for a
one-line trace), where lingua's `detect_multiple_languages_of` on the stripped trace finds >= 2 languages.

Files (evaluate.py): summary.json / summary.csv (rates per language, then the in-domain and out-of-domain means)
and paper_summary.csv, the paper script's CSV exactly (`paper_rows`): its columns, rounding and language order.
pass@1 = the first candidate's correctness, pass@k = any of the first k candidates (the script's pass@4 on its
4-candidate records; the column is named for k); the per-question means averaged with numpy and rounded as the
script rounds (3 places, avg_time 2), languages in its order (fr ja ko th bn en es ru sw te zh de), then any others;
ttc_rate = mean over questions of (mean characters / 4 over candidates) / 8192; avg_time from a record's "MM:SS"
`time` field (0 without); cs_mixtures: per question the most common set of languages among its code-switching
candidates, counted over questions. With `--lang-id lingua --verifier math-verify --benchmark mgsm` (or `msvamp`)
every cell equals, as text, what the paper's script writes for the same generations: checked on constructed
records against the script's own output, 132 of 132 cells on mgsm and 77 of 77 on msvamp (tests/test_paper_eval.py;
the script evaluates only its 12 languages, so rows for others, such as MSVAMP's ar, pt and vi, come after them in
our file and are not in its). On those records the langid CSV differs from lingua's only in consistency (mean
|difference| 0.08 on mgsm, 0.11 on msvamp) and code-switching (0.36, 0.33: lingua finds several languages even in
one-language traces).

Imports: numpy; adamame: answer, language.
"""

import csv
import json
import os
from collections import Counter
from math import comb

import numpy as np

from .answer import paper_answers, verify_with
from .language import INSTRUCTIONS, KNOWN_LANGUAGES, fidelity, get_detector, reward_language, split_response

IN_DOMAIN = ("fr", "ja", "ko", "pt", "th")
METRICS = ("pass@1", "pass@k", "consistency", "lpr", "wpr", "lcpr", "code_switch", "lang_match", "tokens",
           "tokens_correct", "model_tokens", "acc_query", "acc_english", "acc_other", "n_query", "n_english",
           "n_other")
COUNTS = ("n_query", "n_english", "n_other")
PAPER_ORDER = ("fr", "ja", "ko", "th", "bn", "en", "es", "ru", "sw", "te", "zh", "de")
PAPER_COLUMNS = ("language", "pass@1", "pass@4", "language_consistency", "code_switch_rate", "LPR", "WPR", "LCPR",
                 "ttc_rate", "avg_time", "cs_mixtures")
TOKEN_BUDGET = 8192  # the paper's ttc_rate divides characters / 4 by it


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n == 0 or k > n:
        raise ValueError(f"pass@{k} needs at least {k} candidates, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def score_candidate(text: str, gold: str, lang: str, model_tokens=None, *, verifier: str = "builtin", detector=None,
                    train_detector=None) -> dict:
    """One candidate's flags. detector: the evaluation's (default langid over KNOWN_LANGUAGES); train_detector: the
    training-time rule's, for trace_lang and lang_match (default langid over KNOWN_LANGUAGES: `trace_languages`)."""
    detector = detector or get_detector("langid", KNOWN_LANGUAGES)
    trace, _ = split_response(text, paper=True)
    in_answer, in_trace = paper_answers(text)
    correct = any(verify_with(box, gold, verifier) for box in (in_answer, in_trace) if box)
    trace_lang = reward_language(text, "prefix", train_detector or get_detector("langid", KNOWN_LANGUAGES))
    return {"extracted": in_answer or in_trace or None, "correct": bool(correct), **fidelity(trace, lang, detector),
            "trace_lang": trace_lang, "lang_match": trace_lang == lang, "chars": len(text), "tokens": len(text) / 4,
            "model_tokens": model_tokens}


def score_record(rec: dict, count_tokens=None, verifier: str = "builtin", detector=None, train_detector=None) -> dict:
    """Add per-candidate scores to a record {lang, answer, candidates[, candidate_tokens]}."""
    cands = rec["candidates"]
    counts = rec.get("candidate_tokens") or [count_tokens(c) if count_tokens else None for c in cands]
    rec = dict(rec)
    rec["scores"] = [score_candidate(c, rec["answer"], rec["lang"], t, verifier=verifier, detector=detector,
                                     train_detector=train_detector)
                     for c, t in zip(cands, counts)]
    return rec


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def language_metrics(records: list, k: int, lang: str) -> dict:
    def per_question(key):
        return _mean([_mean([float(s[key]) if s[key] is not None else None for s in r["scores"]]) for r in records])

    cands = [s for r in records for s in r["scores"]]
    split = {"query": [s for s in cands if s["trace_lang"] == lang],
             "english": [s for s in cands if s["trace_lang"] == "en" != lang],
             "other": [s for s in cands if s["trace_lang"] not in (lang, "en")]}
    lpr = per_question("line_pass") or 0.0
    wpr = _mean([_mean([float(s["word_pass"]) for s in r["scores"] if s["line_pass"]]) for r in records]) or 0.0
    return {
        "pass@1": _mean([sum(s["correct"] for s in r["scores"]) / len(r["scores"]) for r in records]),
        "pass@k": _mean([pass_at_k(len(r["scores"]), sum(s["correct"] for s in r["scores"]), k) for r in records]),
        "consistency": per_question("consistency"),
        "lpr": lpr,
        "wpr": wpr,
        "lcpr": 2 * lpr * wpr / (lpr + wpr) if lpr + wpr > 0 else 0.0,
        "code_switch": per_question("code_switch"),
        "lang_match": per_question("lang_match"),
        "tokens": per_question("tokens"),
        "tokens_correct": _mean([s["tokens"] for s in cands if s["correct"]]),
        "model_tokens": per_question("model_tokens"),
        **{f"acc_{name}": _mean([float(s["correct"]) for s in group]) for name, group in split.items()},
        **{f"n_{name}": len(group) for name, group in split.items()},
    }


def summarize(records: list, k: int) -> dict:
    """{"languages": {lang: metrics}, "in_domain": {...}, "out_of_domain": {...}, "k": k}."""
    by_lang = {}
    for r in records:
        by_lang.setdefault(r["lang"], []).append(r)
    langs = {lang: language_metrics(rs, k, lang) for lang, rs in sorted(by_lang.items())}

    def average(names):
        sel = [langs[lang] for lang in names]
        if not sel:
            return {}
        return {m: sum(x[m] for x in sel) if m in COUNTS else _mean([x[m] for x in sel]) for m in METRICS}

    return {"languages": langs, "in_domain": average([lg for lg in langs if lg in IN_DOMAIN]),
            "out_of_domain": average([lg for lg in langs if lg not in IN_DOMAIN]), "k": k}


def format_table(summary: dict, metrics=METRICS) -> str:
    """Languages (then the two averages) as columns, metrics as rows; rates in percent."""
    cols = list(summary["languages"]) + [c for c in ("in_domain", "out_of_domain") if summary.get(c)]
    get = lambda c: summary["languages"].get(c) or summary[c]  # noqa: E731
    head = f"{'metric':15}" + "".join(f"{c[:9]:>10}" for c in cols)
    lines = [head, "-" * len(head)]
    for m in metrics:
        cells = []
        for c in cols:
            v = get(c).get(m)
            plain = "tokens" in m or m in COUNTS
            cells.append("-" if v is None else (f"{v:.0f}" if m in COUNTS else f"{v:.1f}" if plain
                                                 else f"{100 * v:.1f}"))
        label = m.replace("pass@k", f"pass@{summary['k']}") + ("" if "tokens" in m or m in COUNTS else " %")
        lines.append(f"{label:15}" + "".join(f"{x:>10}" for x in cells))
    return "\n".join(lines)


def write_summary(summary: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    cols = list(summary["languages"]) + [c for c in ("in_domain", "out_of_domain") if summary.get(c)]
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["metric"] + cols)
        for m in METRICS:
            w.writerow([m] + [(summary["languages"].get(c) or summary[c]).get(m) for c in cols])


# ---------------------------------------------------------------------------------------------- the paper's CSV

def _seconds(t):
    """A "MM:SS" time as the paper's script reads it, else None."""
    if not t or not isinstance(t, str):
        return None
    try:
        parts = t.split(":")
        if len(parts) == 2:
            minutes, seconds = map(int, parts)
            return minutes * 60 + seconds
    except ValueError:
        pass
    return None


def paper_rows(records: list, k: int = 4) -> list:
    """The rows of the paper script's summary CSV for scored records (see the module docstring), one per language,
    with numpy means and the script's rounding, so every cell prints as the script prints it. Every record needs at
    least k candidates (evaluate.py checks it when it reads them)."""
    by_lang = {}
    for r in records:
        by_lang.setdefault(r["lang"], []).append(r)
    order = [lg for lg in PAPER_ORDER if lg in by_lang] + sorted(lg for lg in by_lang if lg not in PAPER_ORDER)
    rows = []
    for lang in order:
        acc, pass_k, ttc, times, cs, consistency, lpr_q, wpr_q, mixtures = [], [], [], [], [], [], [], [], Counter()
        for r in by_lang[lang]:
            sc = r["scores"]
            ttc.append(np.mean([len(c) / 4 for c in r["candidates"]]) / TOKEN_BUDGET)
            accs = [1 if s["correct"] else 0 for s in sc]
            pass_k.append(1 if any(a == 1 for a in accs[:k]) else 0)
            acc.append(accs[0])
            cs.append(np.mean([1 if s["code_switch"] else 0 for s in sc]))
            consistency.append(np.mean([1 if s["consistency"] else 0 for s in sc]))
            lpr_q.append(np.mean([1 if s["line_pass"] else 0 for s in sc]))
            words = [s["word_pass"] for s in sc if s["word_pass"] is not None]
            if words:
                wpr_q.append(np.mean([1 if w else 0 for w in words]))
            top = Counter(tuple(s["cs_languages"]) for s in sc if s["code_switch"]).most_common(1)
            if top:
                mixtures[top[0][0]] += 1
            t = _seconds(r.get("time", ""))
            if t is not None:
                times.append(t)
        mean = lambda xs: np.mean(xs) if xs else 0.0  # noqa: E731
        lpr, wpr = mean(lpr_q), mean(wpr_q)
        lcpr = (2 * lpr * wpr / (lpr + wpr)) if (lpr + wpr) > 0 else 0.0
        mix = "{" + ", ".join(f"{'+'.join(k)}: {v}" for k, v in mixtures.most_common()) + "}" if mixtures else "{}"
        rows.append({"language": lang, "pass@1": round(mean(acc), 3), f"pass@{k}": round(mean(pass_k), 3),
                     "language_consistency": round(mean(consistency), 3), "code_switch_rate": round(mean(cs), 3),
                     "LPR": round(lpr, 3), "WPR": round(wpr, 3), "LCPR": round(lcpr, 3),
                     "ttc_rate": round(mean(ttc), 3), "avg_time": round(mean(times), 2), "cs_mixtures": mix})
    return rows


def write_paper_csv(records: list, path: str, k: int = 4) -> list:
    """paper_summary.csv: the paper script's CSV for these records (csv.DictWriter, its columns; pass@k for k)."""
    rows = paper_rows(records, k)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[c.replace("pass@4", f"pass@{k}") for c in PAPER_COLUMNS])
        w.writeheader()
        w.writerows(rows)
    return rows


# ---------------------------------------------------------------------------------------------- RL prompt selection

def select_for_rl(records: list) -> tuple:
    """The released RL data stage (3_eval/filter_for_rl.py): keep the questions whose candidates are correct at least
    once and not every time, 1 <= correct < n of their n candidates (the released script: 8), `correct` as scored
    above (the first box of the answer part or of the trace verifies: its compute_acc with --verifier math-verify).
    Only such mixed groups carry a GRPO gradient. Returns (rows in the RL format train_grpo.py reads, each with its
    `correct_num`; {lang: (kept, total, mean correct_num of the kept)}), in the records' order."""
    rows, stats = [], {}
    for i, r in enumerate(records):
        c = sum(s["correct"] for s in r["scores"])
        st = stats.setdefault(r["lang"], [0, 0, 0])  # kept, total, sum of the kept's correct_num
        st[1] += 1
        if 1 <= c < len(r["candidates"]):
            st[0] += 1
            st[2] += c
            q = r.get("prompt") or r.get("question")
            if q is None:
                raise ValueError(f"record {i + 1} ({r.get('id', 'no id')}): no 'question' or 'prompt' to select")
            # evaluate.py's records hold the rendered prompt (instruction first); another engine's, the bare question
            field = "prompt" if "prompt" in r or q.startswith(INSTRUCTIONS.get(r["lang"], "\0")) else "question"
            rows.append({"id": r.get("id", f"record-{i + 1}"), "lang": r["lang"], field: q, "answer": r["answer"],
                         "correct_num": c})
    return rows, {lang: (k, t, sc / k if k else 0.0) for lang, (k, t, sc) in stats.items()}


def format_selection(stats: dict) -> str:
    """Per language kept / total and the mean count of correct candidates, as the released script prints them."""
    lines = [f"[{lang}] {k}/{t} kept ({100 * k / t:.1f}%) | avg correct_num={m:.3f}"
             for lang, (k, t, m) in stats.items()]
    kept, total = sum(s[0] for s in stats.values()), sum(s[1] for s in stats.values())
    return "\n".join(lines + [f"Total: {kept}/{total} kept"])
