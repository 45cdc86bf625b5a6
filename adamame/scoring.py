"""The paper's evaluation metrics: accuracy (pass@1, pass@k), language fidelity (consistency, LPR, WPR, LCPR),
code-switching and token use, per language and averaged over in-domain and out-of-domain languages.

Why: the paper's claims are a three-way trade-off (accuracy, fidelity, tokens), and users compare checkpoints, and
generations from other engines, on exactly these numbers, so the definitions are those of the paper's evaluation
script (3_eval/metrics.py of the released code); the README lists what still differs from it, and why.

Per candidate: split at the first `</think>` into trace and answer (no `</think>`: an empty trace, the whole text is
the answer; `<think>` markers dropped). correct = the first `\\boxed{}` of the answer part verifies against the
gold answer, or the first `\\boxed{}` of the trace does. consistency, line_pass, word_pass, code_switch as in
adamame/language.py; lang_match: the first 500 characters are the query language (the training-time rule);
tokens = characters / 4 (the paper's measure); model_tokens = the tokenizer's count, when known.
Per question with n candidates of which c are correct:
    pass@1 = c / n,   pass@k = 1 - C(n - c, k) / C(n, k)     (unbiased; k = n: at least one of the k is correct)
and the mean over its candidates of every other flag. Per language, the mean over questions, except
    WPR  = mean over questions that have a line-passing candidate of the mean word_pass of those candidates
    LCPR = 2 LPR WPR / (LPR + WPR)
    tokens_correct = mean tokens over the correct candidates.
in_domain / out_of_domain: the unweighted mean of the per-language values over the languages present.

Imports: adamame.answer, adamame.language.
"""

from math import comb

from adamame.answer import paper_answers, split_response, verify_with
from adamame.language import PREFIX_CHARS, detect_language, fidelity

IN_DOMAIN = ("fr", "ja", "ko", "pt", "th")
METRICS = ("pass@1", "pass@k", "consistency", "lpr", "wpr", "lcpr", "code_switch", "lang_match", "tokens",
           "tokens_correct", "model_tokens")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n == 0 or k > n:
        raise ValueError(f"pass@{k} needs at least {k} candidates, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def score_candidate(text: str, gold: str, lang: str, model_tokens=None, verifier: str = "builtin") -> dict:
    trace, _ = split_response(text, paper=True)
    in_answer, in_trace = paper_answers(text)
    correct = any(verify_with(box, gold, verifier) for box in (in_answer, in_trace) if box is not None)
    return {"extracted": in_answer if in_answer is not None else in_trace, "correct": bool(correct),
            **fidelity(trace, lang), "lang_match": detect_language(text[:PREFIX_CHARS]) == lang,
            "tokens": len(text) / 4, "model_tokens": model_tokens}


def score_record(rec: dict, count_tokens=None, verifier: str = "builtin") -> dict:
    """Add per-candidate scores to a record {lang, answer, candidates[, candidate_tokens]}."""
    cands = rec["candidates"]
    counts = rec.get("candidate_tokens") or [count_tokens(c) if count_tokens else None for c in cands]
    rec = dict(rec)
    rec["scores"] = [score_candidate(c, rec["answer"], rec["lang"], t, verifier) for c, t in zip(cands, counts)]
    return rec


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def language_metrics(records: list, k: int) -> dict:
    def per_question(key):
        return _mean([_mean([float(s[key]) if s[key] is not None else None for s in r["scores"]]) for r in records])

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
        "tokens_correct": _mean([s["tokens"] for r in records for s in r["scores"] if s["correct"]]),
        "model_tokens": per_question("model_tokens"),
    }


def summarize(records: list, k: int) -> dict:
    """{"languages": {lang: metrics}, "in_domain": {...}, "out_of_domain": {...}, "k": k}."""
    by_lang = {}
    for r in records:
        by_lang.setdefault(r["lang"], []).append(r)
    langs = {lang: language_metrics(rs, k) for lang, rs in sorted(by_lang.items())}

    def average(names):
        sel = [langs[lang] for lang in names]
        return {m: _mean([x[m] for x in sel]) for m in METRICS} if sel else {}

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
            cells.append("-" if v is None else (f"{v:.1f}" if "tokens" in m else f"{100 * v:.1f}"))
        label = m.replace("pass@k", f"pass@{summary['k']}") + ("" if "tokens" in m else " %")
        lines.append(f"{label:15}" + "".join(f"{x:>10}" for x in cells))
    return "\n".join(lines)


def write_summary(summary: dict, out_dir: str) -> None:
    import csv
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    cols = list(summary["languages"]) + [c for c in ("in_domain", "out_of_domain") if summary.get(c)]
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["metric"] + cols)
        for m in METRICS:
            w.writerow([m] + [(summary["languages"].get(c) or summary[c]).get(m) for c in cols])
