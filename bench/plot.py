"""A GRPO run's curves in one picture: reward, accuracy, query-language match, alignment factor, KL and response length
against the RL step, from the run folder's metrics.jsonl.

    python bench/plot.py RUN_DIR [RUN_DIR ...] [--out curves.png]     # several runs side by side (matplotlib)

Several folders are drawn on the same axes, one line each (named by the folder). Needs matplotlib (optional, not a
requirement of the project): without it, a clear error.
"""

import argparse
import json
import os
import sys

PANELS = (("reward", "reward"), ("accuracy", "accuracy"), ("lang_match", "query-language match"),
          ("alignment_factor", "alignment factor α(t)"), ("kl", "KL to the reference"),
          ("response_tokens", "response tokens"))


def read_run(folder):
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not found (a train_grpo.py --out folder has one)")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or "lang_match" not in rows[0]:
        raise SystemExit(f"{path}: no GRPO metrics rows")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="train_grpo.py output folders")
    ap.add_argument("--out", help="the PNG (default: RUN_DIR/curves.png for one run, curves.png for several)")
    args = ap.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("bench/plot.py needs matplotlib, which is not installed (pip install matplotlib)") from None
    runs = {os.path.basename(os.path.abspath(r)): read_run(r) for r in args.runs}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for name, rows in runs.items():
            steps = [r["step"] for r in rows if key in r]
            ax.plot(steps, [r[key] for r in rows if key in r], label=name, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = args.out or (os.path.join(args.runs[0], "curves.png") if len(args.runs) == 1 else "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out} ({len(runs)} run(s), {', '.join(f'{n}: {len(r)} steps' for n, r in runs.items())})")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
