"""Scoring throughput: extraction + verification + reasoning language + fidelity flags per response.

Responses are ~2,000-character traces built from real multilingual text (MGSM questions and exemplar solutions
in ../shared/data when present, else built-in sentences), one sentence per line with inline math, ending in
`</think>` and a boxed answer; past 1,000 characters each line is English with probability 1/4.

    python bench/rewards.py [--n 4096]
"""

import argparse
import glob
import json
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from adamame.answer import accuracy  # noqa: E402
from adamame.language import (KNOWN_LANGUAGES, fidelity, fidelity_rates, get_detector, reward_language,  # noqa: E402
                              split_response)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "eval", "mgsm")
FALLBACK = {
    "fr": "Janet a seize canards qui pondent des œufs chaque jour et elle en mange trois.",
    "en": "Janet has sixteen ducks that lay eggs every day and she eats three of them.",
    "ja": "ジャネットのアヒルは毎日卵を産み、彼女は朝食に三個食べます。",
}


def sentences():
    out = {}
    for path in glob.glob(os.path.join(DATA, "*.jsonl")):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            out.setdefault(r["lang"], []).append(r["question"])
    return out or {k: [v] for k, v in FALLBACK.items()}


def make_response(rng, lang, pool):
    lines, n = [], 0
    while n < 2000:
        s = rng.choice(pool[lang if (n < 1000 or rng.random() > 0.25) else "en"])
        s = s + f" $ {rng.randint(1, 99)} + {rng.randint(1, 99)} = {rng.randint(2, 198)} $"
        lines.append(s)
        n += len(s) + 1
    ans = rng.randint(0, 1000)
    return "\n".join(lines) + f"\n</think>\nLa réponse est \\boxed{{{ans}}}.", str(ans if rng.random() < 0.5 else ans + 1)


# boxed answers in the forms MATH-style golds take, right and wrong (the checker's slow paths: LaTeX, sets,
# intervals, symbolic expressions); cycled to 1,000 answers
FORMS = [("\\frac{14}{3}", "14/3"), ("\\frac{-1 \\pm \\sqrt{5}}{2}", "\\frac{-1+\\sqrt5}{2}, \\frac{-1-\\sqrt5}{2}"),
         ("(-\\infty, 1) \\cup (2, \\infty)", "(2,\\infty)\\cup(-\\infty,1)"), ("2 \\sin b \\cos a", "\\sin(a+b)-\\sin(a-b)"),
         ("(x+1)^2", "x^2+2x+1"), ("\\text{(C)}", "C"), ("6 or 7", "42"), ("11,\\!111,\\!100", "11111100"),
         ("(7,11), (11,7)", "(11,7), (7,11)"), ("3\\sqrt{2}", "\\sqrt{18}"), ("x = 5", "5"), ("1 000", "1000"),
         ("42 個", "42"), ("2,5", "2.5"), ("\\dfrac{3}{4}", "0.75"), ("2^{10}", "1023")]


def time_forms(n=1000):
    from adamame.answer import verify

    items = [FORMS[i % len(FORMS)] for i in range(n)]
    t0 = time.perf_counter()
    ok = sum(verify(p, g) for p, g in items)
    return time.perf_counter() - t0, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="number of responses (default 4096)")
    args = ap.parse_args()
    rng = random.Random(0)
    pool = sentences()
    langs = sorted(pool)
    items = [(lang, *make_response(rng, lang, pool)) for lang in (rng.choice(langs) for _ in range(args.n))]
    reward_language("warm up the identifier")
    t0 = time.perf_counter()
    acc = [accuracy(resp, gold) for _, resp, gold in items]
    t1 = time.perf_counter()
    rl = [reward_language(resp) for _, resp, _ in items]
    t2 = time.perf_counter()
    detector = get_detector("langid", KNOWN_LANGUAGES)
    flags = [fidelity(split_response(resp, paper=True)[0], lang, detector) for lang, resp, _ in items]
    t3 = time.perf_counter()
    total = t3 - t0
    chars = sum(len(r) for _, r, _ in items) / len(items)
    rates = fidelity_rates(flags)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"{args.n} responses, mean {chars:.0f} chars, {len(langs)} languages")
    print(f"accuracy (extract+verify): {t1 - t0:7.2f} s  {args.n / (t1 - t0):9.0f} responses/s  (mean acc {sum(acc) / len(acc):.2f})")
    print(f"reward language (500 ch):  {t2 - t1:7.2f} s  {args.n / (t2 - t1):9.0f} responses/s  "
          f"(match {sum(a == lang for a, (lang, _, _) in zip(rl, items)) / len(rl):.2f})")
    print(f"fidelity flags (lines):    {t3 - t2:7.2f} s  {args.n / (t3 - t2):9.0f} responses/s  (LPR {rates['lpr']:.2f})")
    print(f"total:                     {total:7.2f} s  {args.n / total:9.0f} responses/s, single process")
    dt, ok = time_forms()
    print(f"checker on 1,000 LaTeX-form answers ({len(FORMS)} forms, {ok} equal): {dt:.2f} s, "
          f"{dt:.3f} ms per answer")


if __name__ == "__main__":
    main()
