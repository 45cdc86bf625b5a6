"""The paper's ablation in miniature: reward variants on the toy task, several RL seeds, the paper's measures.

    python bench/ablation.py [--out runs/ablation] [--seeds 5] [--variants grpo adamame ...] [--no-control]

The recipe end to end, as the demo runs it: the toy's base stage and Stage 1 (train_sft.py's default, once, reused
when --out holds it), the RL prompts the SFT model solves 1 to 7 times of 8 (evaluate.py --select-rl's code), then
train_grpo.py (the demo's RL settings: the paper's B = 2, floor 0.1, T = 90, group 8, temperature 0.8; 2 ranks) with
every variant and seed, all from the same SFT model and prompts; none is tuned apart. Every RL model is scored on the
held-out toy prompts (in-domain fr ja ko pt th, out-of-domain es de) with evaluate.py's code, 4 samples per prompt at
its temperature 0.6: pass@1, pass@4, LCPR, code-switch rate and tokens (the tokenizer's), each as the mean over seeds
with a 95% t-interval, and each variant's difference from GRPO paired by seed (same seed, same SFT model) with its
95% interval. The control repeats grpo and adamame on the same toy with no competence gap (every cell taught
step by step: ADAMAME_TOY_NO_GAP=1), where the schedule has nothing to recover.

Writes --out/ablation.json (settings, every run's figures, per-step curves of accuracy, query-language match, mixed
groups and alpha(t)) and, with matplotlib installed, --out/ablation.png of the curves.
`python bench/readme_table.py ablation runs/ablation/ablation.json` renders the README's block from ablation.json.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
VARIANTS = ("grpo", "binary-lang", "adamame", "adamame-const", "adamame-diversity")
DEFAULT_VARIANTS = ("grpo", "binary-lang", "adamame", "adamame-const")
CONTROL_VARIANTS = ("grpo", "adamame")
MEASURES = (("pass@1", "pass@1"), ("pass@k", "pass@4"), ("lcpr", "LCPR"), ("code_switch", "code-switch"),
            ("lang_match", "lang match"), ("model_tokens", "tokens"))
CURVES = ("accuracy", "lang_match", "mixed_groups", "alignment_factor")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def run(cmd, nproc, env=None):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
           "OMP_NUM_THREADS": "1", **(env or {})}
    full = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *cmd]
    p = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")


def interval(xs) -> dict:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    m = statistics.fmean(xs)
    h = T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return {"mean": m, "ci95": h}


def figures(summary) -> dict:
    return {dom: {k: summary[dom].get(k) for k, _ in MEASURES} for dom in ("in_domain", "out_of_domain")}


def summarize_runs(runs, reference=None) -> dict:
    """Per domain and measure: the interval over seeds, and (given the reference variant's runs, paired by seed)
    the interval of the differences."""
    out = {}
    for dom in ("in_domain", "out_of_domain"):
        out[dom] = {}
        for k, _ in MEASURES:
            xs = [r[dom][k] for r in runs]
            out[dom][k] = interval(xs)
            if reference is not None:
                ref = {r["seed"]: r[dom][k] for r in reference}
                out[dom][k]["diff"] = interval([r[dom][k] - ref[r["seed"]] for r in runs])
    return out


def _cell(x, scale, diff=False):
    m, h = scale * x["mean"], scale * x["ci95"]
    return f"{m:+.1f} ± {h:.1f}" if diff else f"{m:.1f} ± {h:.1f}"


def table(res, block="main") -> str:
    """One row per variant (means ± 95% half-widths), then the paired differences from grpo, for both domains."""
    part = res[block]
    lines = []
    for dom, title in (("in_domain", "in-domain (fr ja ko pt th)"), ("out_of_domain", "out-of-domain (es de)")):
        head = f"{title:28}" + "".join(f"{name:>14}" for _, name in MEASURES)
        lines += [head, "-" * len(head)]
        sft = part["sft"][dom]
        lines.append(f"{'SFT model':28}" + "".join(f"{(1 if k == 'model_tokens' else 100) * sft[k]:>14.1f}"
                                                    for k, _ in MEASURES))
        for v, d in part["variants"].items():
            lines.append(f"{v:28}" + "".join(f"{_cell(d['summary'][dom][k], 1 if k == 'model_tokens' else 100):>14}"
                                             for k, _ in MEASURES))
        for v, d in part["variants"].items():
            if v != "grpo":
                lines.append(f"{v + ' - grpo':28}" + "".join(
                    f"{_cell(d['summary'][dom][k]['diff'], 1 if k == 'model_tokens' else 100, True):>14}"
                    for k, _ in MEASURES))
        lines.append("")
    return "\n".join(lines[:-1])


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    blocks = [b for b in ("main", "control") if b in res]
    fig, axes = plt.subplots(len(blocks), len(CURVES), figsize=(4.2 * len(CURVES), 3.3 * len(blocks)), squeeze=False)
    for row, block in zip(axes, blocks):
        for ax, key in zip(row, CURVES):
            for v, r in res[block]["variants"].items():
                runs = r["curves"][key]
                steps = range(1, min(map(len, runs)) + 1)
                ax.plot(steps, [statistics.fmean(run[i - 1] for run in runs) for i in steps], label=v)
            ax.set_title(f"{block}: {key.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("RL step")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def block(out, variants, seeds, env, bar, *, steps=None, sft_steps=None, per_language=None, nproc=2):
    """The SFT model (once), its RL prompts (once), every variant x seed trained and scored."""
    from adamame.toy import GRPO_SETTINGS, evaluate, held_out_questions, select_rl_prompts

    toy = os.path.join(out, "sft")  # train_sft.py's default builds the toy task (pool and held-out prompts) here
    sft = os.path.join(toy, "final")
    if not os.path.exists(os.path.join(sft, "config.json")):
        run(["train_sft.py", "--out", toy, "--overwrite", *(["--max-steps", str(sft_steps)] if sft_steps else [])],
            nproc, env)  # (an interrupted stage is redone)
    train = os.path.join(toy, "toy_rl_train.jsonl")
    s = {**GRPO_SETTINGS, "max_steps": steps or GRPO_SETTINGS["max_steps"]}
    if not os.path.exists(train):
        os.environ.update(env)  # the selection runs in this process
        select_rl_prompts(sft, os.path.join(toy, "toy_rl_pool.jsonl"), train, max_new_tokens=s["max_response_tokens"])
    flags = [str(x) for x in ["--batch-prompts", s["batch_prompts"], "--mini-batch-prompts", s["mini_batch_prompts"],
                              "--group-size", s["group_size"], "--temperature", s["temperature"], "--lr", s["lr"],
                              "--lora-rank", s["lora_rank"], "--max-steps", s["max_steps"], "--max-prompt-tokens",
                              s["max_prompt_tokens"], "--max-response-tokens", s["max_response_tokens"],
                              "--eval-every", "0", "--save-every", s["max_steps"], "--micro-batch-tokens",
                              s["micro_batch_tokens"], "--log-rollouts", "0"]]
    questions = held_out_questions(toy, *([per_language] if per_language else []))
    res = {"sft": figures(evaluate(sft, questions, s["max_response_tokens"], 0, desc="eval sft")),
           "rl_prompts": sum(1 for _ in open(train, encoding="utf-8")), "variants": {}}
    for v in variants:
        runs = []
        for seed in range(seeds):
            run_dir = os.path.join(out, f"{v}-seed{seed}")
            if not os.path.exists(os.path.join(run_dir, "final", "config.json")):
                run(["train_grpo.py", "--model", sft, "--data", train, "--out", run_dir, "--reward", v, "--seed",
                     str(seed), "--overwrite", *flags], nproc, env)
            summ = evaluate(os.path.join(run_dir, "final"), questions, s["max_response_tokens"], seed,
                            desc=f"eval {v} {seed}")
            rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
            runs.append({"seed": seed, **figures(summ), "curves": {k: [r[k] for r in rows] for k in CURVES}})
            bar.update(1)
        res["variants"][v] = {"runs": [{k: r[k] for k in ("seed", "in_domain", "out_of_domain")} for r in runs],
                              "curves": {k: [r["curves"][k] for r in runs] for k in CURVES}}
    ref = res["variants"].get("grpo", {}).get("runs")
    for v, d in res["variants"].items():
        d["summary"] = summarize_runs(d["runs"], ref if v != "grpo" else None)
    res["held_out_prompts"] = len(questions)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ablation", help="output folder (default runs/ablation)")
    ap.add_argument("--seeds", type=int, default=5, help="RL seeds per variant (default 5)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                    help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    ap.add_argument("--no-control", action="store_true", help="skip the no-gap control (grpo and adamame)")
    ap.add_argument("--steps", type=int, default=90, help="RL steps per run (the demo's, the paper's T = 90)")
    ap.add_argument("--sft-steps", type=int, help="steps of each toy SFT stage (default: the demo's)")
    ap.add_argument("--eval-per-language", type=int, help="held-out prompts per language (default: all 60)")
    ap.add_argument("--nproc", type=int, default=2, help="ranks per run (default 2)")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from adamame.toy import EVAL_TEMPERATURE, GRPO_SETTINGS

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    n = len(args.variants) * args.seeds + (0 if args.no_control else len(CONTROL_VARIANTS) * args.seeds)
    bar = tqdm(total=n, desc="ablation runs", dynamic_ncols=True)
    res = {"settings": {"seeds": args.seeds, "k": 4, "eval_temperature": EVAL_TEMPERATURE, "ranks": args.nproc,
                        "rl": {**GRPO_SETTINGS, "max_steps": args.steps}, "sft_steps": args.sft_steps}}
    sizes = dict(steps=args.steps, sft_steps=args.sft_steps, per_language=args.eval_per_language, nproc=args.nproc)
    res["main"] = block(out, args.variants, args.seeds, {"ADAMAME_TOY_NO_GAP": "0"}, bar, **sizes)
    if not args.no_control:
        res["control"] = block(os.path.join(out, "control"), CONTROL_VARIANTS, args.seeds,
                               {"ADAMAME_TOY_NO_GAP": "1"}, bar, **sizes)
    bar.close()
    res["seconds"] = time.perf_counter() - t0
    res["plot"] = plot(res, os.path.join(out, "ablation.png"))
    if not res["plot"]:
        print("matplotlib is not installed: no ablation.png (pip install matplotlib; the curves are in ablation.json)")
    with open(os.path.join(out, "ablation.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    print(f"\nheld-out toy prompts, 4 samples each at temperature {EVAL_TEMPERATURE}; mean ± 95% interval over "
          f"{args.seeds} RL seeds; 'X - grpo': paired by seed")
    print(table(res, "main"))
    if "control" in res:
        print("\ncontrol: the same toy with no competence gap\n" + table(res, "control"))
    print(f"wrote {os.path.join(out, 'ablation.json')} in {res['seconds'] / 60:.1f} min")
    return res


if __name__ == "__main__":
    main()
