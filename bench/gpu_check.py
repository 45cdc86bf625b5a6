"""The one prepared GPU check: correctness tests compiled for real, kernel / generation / GRPO-step benchmarks.

    bash bench/gpu_check.sh [OUT_DIR]        # on a GPU machine: < 8 minutes on one H100
    python bench/gpu_check.py --cpu --out D  # reduced mode (tiny shapes, Triton interpreter): what CI runs

Each step runs in a subprocess with its own time budget and is recorded as ok / failed / skipped (with the reason
and the tail of its output), so one failure or timeout never loses the other results. Writes
OUT_DIR/gpu_check.json: {"gpu", "date", "commit", "mode", "steps": {name: {...}}}.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps(cpu: bool, out: str):
    py = sys.executable
    if cpu:
        return [
            ("tests", [py, "-m", "pytest", "-q", "tests/test_gpu.py", "tests/test_kernels.py", "-k",
                       "1009 or on_policy or cuda"], 300, None),
            ("grpo_smoke", [py, "-m", "pytest", "-q", "tests/test_train_grpo.py", "-k", "logged_step"], 120, None),
            ("kernels", [py, "bench/kernels.py", "--tiny", "--json", f"{out}/kernels.json"], 120, f"{out}/kernels.json"),
            ("generate", [py, "bench/generate.py", "--tiny", "--json", f"{out}/generate.json"], 120,
             f"{out}/generate.json"),
            ("grpo_step", [py, "bench/grpo_step.py", "--tiny", "--json", f"{out}/grpo_step.json"], 120,
             f"{out}/grpo_step.json"),
        ]
    return [
        ("tests", [py, "-m", "pytest", "-q", "-x", "tests/test_gpu.py", "tests/test_kernels.py"], 150, None),
        ("grpo_smoke", [py, "-m", "pytest", "-q", "tests/test_train_grpo.py", "-k", "logged_step"], 120, None),
        ("kernels", [py, "bench/kernels.py", "--json", f"{out}/kernels.json"], 120, f"{out}/kernels.json"),
        ("generate", [py, "bench/generate.py", "--gpu", "--json", f"{out}/generate.json"], 150, f"{out}/generate.json"),
        ("grpo_step", [py, "bench/grpo_step.py", "--gpu", "--json", f"{out}/grpo_step.json"], 90,
         f"{out}/grpo_step.json"),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"), help="results folder (default $OUT)")
    ap.add_argument("--cpu", action="store_true", help="reduced mode for machines without a GPU (CI)")
    ap.add_argument("--budget", type=float, default=450, help="total seconds; later steps are skipped past it")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    env = {**os.environ, "PYTHONPATH": ROOT}
    if args.cpu:
        env["TRITON_INTERPRET"] = "1"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        torch_version = torch.__version__
    except Exception as e:  # noqa: BLE001
        gpu, torch_version = f"unknown ({e})", None
    result = {"gpu": gpu, "date": datetime.date.today().isoformat(), "commit": commit, "torch": torch_version,
              "mode": "cpu" if args.cpu else "gpu", "steps": {}}
    for name, cmd, limit, json_path in steps(args.cpu, args.out):
        left = args.budget - (time.time() - t_start)
        if left < 20:
            result["steps"][name] = {"status": "skipped", "reason": "time budget spent"}
            continue
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(limit, left))
            status = "ok" if p.returncode == 0 else "failed"
            tail = (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            status, tail = "timeout", ((e.stdout or b"")[-3000:]).decode(errors="replace") if isinstance(
                e.stdout, bytes) else str(e.stdout or "")[-3000:]
        entry = {"status": status, "seconds": round(time.time() - t0, 1), "command": " ".join(cmd[1:]),
                 "output_tail": tail}
        if json_path and os.path.exists(json_path):
            with open(json_path) as f:
                entry["result"] = json.load(f)
        result["steps"][name] = entry
        print(f"[{name}] {status} in {entry['seconds']} s", flush=True)
    path = os.path.join(args.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
