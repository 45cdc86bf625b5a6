"""How far langid (the default identifier) is from lingua (the paper's) on the training-time rule.

    python bench/lang_agreement.py [--n 600]     # needs ../shared/data and lingua-language-detector

The texts: --n RL prompts (their question part) and the MGSM exemplar solutions of ../shared/data, each as it is,
with a LaTeX snippet in front, and with one in the middle; for each, the first 500 characters. Prints how often
langid over the 14 training languages gives lingua's answer on the raw prefix (the rule the trainer uses) and on the
math-stripped prefix (adamame.language.strip_math), overall and per query language.
"""

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "..", "shared", "data")
LATEX = [r"Let $x = 3$. Then $x^2 + 2x = 15$, so \(\frac{15}{3} = 5\). ", r"\[ \sum_{k=1}^{n} k = \frac{n(n+1)}{2} \] ",
         r"$$a_n = 2^n - 1$$ ", r"\boxed{42} ", "We have 3 + 4 = 7 and 7 * 6 = 42. "]


def texts(n, seed=0):
    rng = random.Random(seed)
    base = []
    with open(os.path.join(DATA, "rl", "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            base.append((o["lang"], o["prompt"].split("\n\n", 1)[-1]))
    base = rng.sample(base, min(n, len(base)))
    with open(os.path.join(DATA, "sft", "mgsm_exemplars.jsonl"), encoding="utf-8") as f:
        base += [(o["lang"], o["solution"]) for o in map(json.loads, f)]
    out = []
    for lang, t in base:
        out += [(lang, t), (lang, rng.choice(LATEX) + t), (lang, t[:len(t) // 2] + " " + rng.choice(LATEX) + t[len(t) // 2:])]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="RL prompts to sample (default 600)")
    args = ap.parse_args(argv)
    from adamame.language import PREFIX_CHARS, TRAIN_LANGUAGES, get_detector, strip_math

    if not os.path.isdir(DATA):
        raise SystemExit(f"{DATA}: not found (the shared data folder)")
    lingua, langid = get_detector("lingua", TRAIN_LANGUAGES), get_detector("langid", TRAIN_LANGUAGES)
    counts = {}
    for lang, t in texts(args.n):
        p = t[:PREFIX_CHARS]
        ref = lingua.detect(p)
        c = counts.setdefault(lang, [0, 0, 0])
        c[0] += 1
        c[1] += langid.detect(p) == ref
        c[2] += langid.detect(strip_math(p)) == ref
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    print(f"{lingua.version} vs {langid.version}, {total[0]} prefixes of {PREFIX_CHARS} characters, "
          f"{len(TRAIN_LANGUAGES)} languages")
    print(f"{'lang':6}{'texts':>7}{'raw':>8}{'stripped':>10}")
    for lang, (n, raw, stripped) in sorted(counts.items()):
        print(f"{lang:6}{n:7d}{raw / n:8.3f}{stripped / n:10.3f}")
    print(f"{'all':6}{total[0]:7d}{total[1] / total[0]:8.3f}{total[2] / total[0]:10.3f}")


if __name__ == "__main__":
    main()
