"""train_grpo.py end to end on one device: a few steps of a tiny model, as a user runs it.

Builds a tiny Qwen3-architecture model folder and a tokenizer (tests/helpers.py) and 20 RL prompts in a temporary
folder, runs `train_grpo.py` for 3 steps in a subprocess (bf16 and CUDA graphs on a GPU), and reports its metrics:
the sampler-vs-trainer log-prob difference (`logprob_diff`: the rollout copy's decode against the trainer's
forward, bf16 on a GPU), the phase times, rollout tokens/s, and whether the export loads.

    python bench/grpo_smoke.py --json out.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from adamame.hf import load_model, save_model
    from tests.helpers import save_tiny_hf, save_tiny_tokenizer, write_rl_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_hf(os.path.join(tmp, "model"), "qwen3", num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=300)
        # stored in bf16, as the paper's checkpoints are: on a GPU the run holds its frozen base in bf16 beside float32
        # adapters in one FSDP2 group (dist.shard_model), the path the paper's models take
        save_model(load_model(os.path.join(tmp, "model")), os.path.join(tmp, "model"), dtype=torch.bfloat16)
        save_tiny_tokenizer(os.path.join(tmp, "model"), vocab_size=300)
        write_rl_jsonl(os.path.join(tmp, "rl.jsonl"), n=20)
        out = os.path.join(tmp, "out")
        cmd = [sys.executable, "train_grpo.py", "--model", os.path.join(tmp, "model"), "--data",
               os.path.join(tmp, "rl.jsonl"), "--out", out, "--max-steps", str(args.steps), "--batch-prompts", "4",
               "--mini-batch-prompts", "2", "--group-size", "4", "--max-response-tokens", "16", "--lora-rank", "4",
               "--temperature", "1.0", "--log-rollouts", "0"]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))] if p.returncode == 0 else []
        res = {"returncode": p.returncode, "run_seconds": seconds, "steps": len(rows),
               "logprob_diff": max((r["logprob_diff"] for r in rows), default=None),
               "time_rollout": sum(r["time_rollout"] for r in rows) / max(1, len(rows)) if rows else None,
               "time_update": sum(r["time_update"] for r in rows) / max(1, len(rows)) if rows else None,
               "rollout_tokens_per_s": rows[-1]["rollout_tokens_per_s"] if rows else None,
               "verify_timeouts": sum(r["verify_timeouts"] for r in rows) if rows else None,
               "exported": os.path.exists(os.path.join(out, "final", "model.safetensors")),
               "stderr_tail": p.stderr[-1500:] if p.returncode else ""}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if p.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
