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
from adamame.rewards import accuracy, fidelity, fidelity_rates, reward_language, split_response  # noqa: E402

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
    flags = [fidelity(split_response(resp)[0], lang) for lang, resp, _ in items]
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


if __name__ == "__main__":
    main()
