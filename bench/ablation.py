"""The paper's ablations in miniature: every reward variant on the toy task, several seeds, one table.

    python bench/ablation.py [--out runs/ablation] [--seeds 3] [--variants grpo adamame ...]

Trains the toy SFT model once (train_sft.py's default; reused when --out already holds it), then runs
AdaMame-GRPO (train_grpo.py, the toy demo's RL settings, 2 ranks) with each reward variant and each seed, evaluates
every RL model on the held-out toy prompts with evaluate.py's code (4 samples per prompt at its default temperature,
the demo's set: up to 100 held-out prompts per language), and prints one table: per variant the in-domain accuracy
(pass@1), query-language match, LCPR and tokens (the tokenizer's count), each as mean ± standard deviation over
seeds, with the SFT model as the first row. Writes
--out/ablation.json (the table, every run's figures, and the per-step curves of reward, accuracy and language match
from each run's metrics.jsonl) and, when matplotlib is installed, --out/ablation.png of the curves.
`python bench/readme_table.py ablation` renders the README's table from ablation.json (and a line per re-scored
temperature). `--eval-temperature 0.8` trains nothing: it re-scores the runs of --out/ablation.json (same settings
required) at that temperature into --out/ablation-T0.8.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
VARIANTS = ("grpo", "binary-lang", "adamame", "adamame-const", "adamame-diversity")
METRICS = ("accuracy", "lang_match", "lcpr", "tokens")
CURVES = ("reward", "accuracy", "lang_match")


def run(cmd, nproc):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    full = [sys.executable, *cmd] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", str(nproc), *cmd]
    p = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")


def figures(summary) -> dict:
    d = summary["in_domain"]
    return {"accuracy": d["pass@1"], "lang_match": d["lang_match"], "lcpr": d["lcpr"], "tokens": d["model_tokens"],
            **{k: d[k] for k in ("acc_query", "acc_english", "n_query", "n_english")}}


def mean_std(xs):
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def table(res) -> str:
    head = f"{'variant':18}" + "".join(f"{m:>18}" for m in ("pass@1 %", "lang match %", "LCPR %", "tokens"))
    lines = [head, "-" * len(head)]
    for name, row in [("SFT model", res["sft"])] + [(v, res["variants"][v]["summary"]) for v in res["variants"]]:
        cells = []
        for m in METRICS:
            x = row[m]
            scale = 1 if m == "tokens" else 100
            cells.append(f"{scale * x['mean']:.1f} ± {scale * x['std']:.1f}" if isinstance(x, dict)
                         else f"{scale * x:.1f}")
        lines.append(f"{name:18}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.5))
    for ax, key in zip(axes, CURVES):
        for v, r in res["variants"].items():
            runs = r["curves"][key]
            steps = range(1, min(map(len, runs)) + 1)
            ax.plot(steps, [statistics.fmean(run[i - 1] for run in runs) for i in steps], label=v)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ablation", help="output folder (default runs/ablation)")
    ap.add_argument("--seeds", type=int, default=3, help="RL seeds per variant (default 3)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=90, help="RL steps per run (the demo's 90)")
    ap.add_argument("--sft-steps", type=int, help="steps of each toy SFT stage (default: the demo's)")
    ap.add_argument("--eval-per-language", type=int, default=100, help="held-out prompts per language (100)")
    ap.add_argument("--nproc", type=int, default=2, help="ranks per run (default 2)")
    ap.add_argument("--eval-temperature", type=float, help="re-score the runs of --out/ablation.json at this "
                    "temperature into ablation-T<t>.json, training nothing (default: train, score at evaluate.py's "
                    "0.6)")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from adamame.toy import EVAL_TEMPERATURE, GRPO_SETTINGS, evaluate, held_out_questions

    temp = EVAL_TEMPERATURE if args.eval_temperature is None else args.eval_temperature
    rescore = args.eval_temperature is not None
    stem = f"ablation-T{temp:g}" if rescore else "ablation"

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    toy = os.path.join(out, "sft")  # train_sft.py's default builds the toy task (RL and held-out prompts too) here
    sft = os.path.join(toy, "final")
    if rescore:  # only the runs ablation.json was made from, with the settings asked for now
        trained = os.path.join(out, "ablation.json")
        with open(trained, encoding="utf-8") as f:
            st = json.load(f)["settings"]
        now = {"rl": {**GRPO_SETTINGS, "max_steps": args.steps}, "sft_steps": args.sft_steps, "seeds": args.seeds,
               "ranks": args.nproc}
        if any(st.get(k) != v for k, v in now.items()):
            raise SystemExit(f"{trained}: its runs were trained with other settings than these; re-scoring needs the "
                             f"same --steps/--sft-steps/--seeds/--nproc and the same toy settings")
    elif not os.path.exists(os.path.join(sft, "config.json")):
        run(["train_sft.py", "--out", toy, *(["--max-steps", str(args.sft_steps)] if args.sft_steps else [])],
            args.nproc)
    s = {**GRPO_SETTINGS, "max_steps": args.steps}
    rl_flags = ["--batch-prompts", s["batch_prompts"], "--mini-batch-prompts", s["mini_batch_prompts"],
                "--group-size", s["group_size"], "--temperature", s["temperature"], "--lr", s["lr"],
                "--lora-rank", s["lora_rank"], "--max-steps", s["max_steps"], "--max-prompt-tokens",
                s["max_prompt_tokens"], "--max-response-tokens", s["max_response_tokens"], "--eval-every", "0",
                "--save-every", s["max_steps"], "--micro-batch-tokens", s["micro_batch_tokens"], "--log-rollouts", "0"]
    rl_flags = [str(x) for x in rl_flags]
    questions = held_out_questions(toy, args.eval_per_language)
    sft_summary = evaluate(sft, questions, s["max_response_tokens"], 0, desc="eval sft", temperature=temp)
    res = {"settings": {"seeds": args.seeds, "rl_steps": args.steps, "sft_steps": args.sft_steps,
                        "held_out_prompts": len(questions), "k": 4, "eval_temperature": temp,
                        "ranks": args.nproc, "rl": s, "rescored": rescore},
           "sft": figures(sft_summary), "variants": {}}
    bar = tqdm(total=len(args.variants) * args.seeds, desc="ablation runs", dynamic_ncols=True)
    for v in args.variants:
        runs = []
        for seed in range(args.seeds):
            run_dir = os.path.join(out, f"{v}-seed{seed}")
            if not rescore:
                run(["train_grpo.py", "--model", sft, "--data", os.path.join(toy, "toy_rl_train.jsonl"), "--out",
                     run_dir, "--reward", v, "--seed", str(seed), *rl_flags], args.nproc)
            summ = evaluate(os.path.join(run_dir, "final"), questions, s["max_response_tokens"], seed,
                            desc=f"eval {v} {seed}", temperature=temp)
            rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
            runs.append({"seed": seed, **figures(summ), "curves": {k: [r[k] for r in rows] for k in CURVES}})
            bar.update(1)
        res["variants"][v] = {"runs": [{k: r[k] for k in ("seed", *METRICS)} for r in runs],
                              "summary": {m: mean_std([r[m] for r in runs]) for m in METRICS},
                              "curves": {k: [r["curves"][k] for r in runs] for k in CURVES}}
        res["seconds"] = time.perf_counter() - t0
        with open(os.path.join(out, stem + ".json"), "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    bar.close()
    res["seconds"] = time.perf_counter() - t0
    res["plot"] = plot(res, os.path.join(out, stem + ".png"))
    with open(os.path.join(out, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    print(f"\nin-domain held-out toy prompts ({len(questions)} prompts x 4 samples at temperature {temp:g}), "
          f"mean ± std over {args.seeds} seed(s), {args.steps} RL steps each:")
    print(table(res))
    print(f"wrote {os.path.join(out, stem + '.json')} in {res['seconds'] / 60:.1f} min")
    return res


if __name__ == "__main__":
    main()
