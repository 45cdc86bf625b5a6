"""The one prepared GPU check: GPU tests, kernel / generation / memory benchmarks and a GRPO smoke run.

    bash bench/gpu_check.sh OUT_DIR            # on the lent GPU machine (no network; carried wheels in .whl/)
    bash bench/gpu_check.sh OUT_DIR --only kernels generate   # a rerun of the failed steps (within 150 s)
    python bench/gpu_check.py --cpu --out D    # reduced mode (tiny shapes, Triton interpreter): what CI runs

Steps, in this order, each in a subprocess with its own time limit; the limits add up to the whole budget (360 s,
or 150 s with --only), so a step that runs to its limit never starves the next:
    preflight       imports, one Triton launch, each SDPA call site's backend, one CUDA-graph capture, each failure
                    named with its escape hatch (bench/preflight.py)
    tests           the GPU tests (tests/test_gpu.py, tests/test_kernels.py compiled by Triton)
    kernels         log-prob forward and GRPO loss forward + backward at 32,768 x 151,936 bf16: the fused loss,
                    the log-prob kernel then PyTorch (unfused), eager, Liger-Kernel's Triton GRPO loss,
                    torch.compile, each beside the step model's time (bench/loss_kernels.py)
    generate        the kernel floor (a graph of 300 tiny kernels); decode throughput at batch 1 and 512 rows, fraction
                    of the bandwidth bound (batch 1 beside the step-time model's), against
                    transformers; a paged rollout against the step-time model (bench/generate.py)
    rollout_memory  one paper-shaped rollout: peak memory against the plan (bench/memory_check.py rollout)
    update_memory   one 32,768-token update micro-batch: peak memory against the plan, MFU, its time beside
                    bench/step.py's prediction (... update)
    grpo_smoke      train_grpo.py for 3 steps of a tiny model, logprob_diff in bf16 (bench/grpo_smoke.py)
OUT_DIR/gpu_check.json is rewritten before and after every step: {"gpu", "date", "commit", "torch", "triton",
"cuda", "nvidia_smi", "mode", "seconds", "steps": {name: {"status": "ok"|"failed"|"skipped"|"running",
"seconds", ...the step's figures, "log_tail"}}}, so a time-out of the whole command keeps every finished step. The
steps write their figures to a scratch folder and the check folds them into gpu_check.json: OUT_DIR holds at most
gpu_check.json and gpu_check.sh's nvidia-smi.txt (the GPU machine sends back no more than 8 files).
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("preflight", "tests", "kernels", "generate", "rollout_memory", "update_memory", "grpo_smoke")
BUDGET_S, RERUN_BUDGET_S = 360, 150
# seconds per step on a GPU (they add up to BUDGET_S) and in the CPU mode (CI, no budget pressure)
LIMITS_GPU = dict(preflight=30, tests=75, kernels=70, generate=75, rollout_memory=40, update_memory=40, grpo_smoke=30)
LIMITS_CPU = dict(preflight=120, tests=240, kernels=120, generate=120, rollout_memory=60, update_memory=90,
                  grpo_smoke=120)


def steps(cpu: bool, scratch: str):
    """(name, command, seconds, figures file) for each step."""
    py = sys.executable
    j = lambda name: os.path.join(scratch, f"{name}.json")  # noqa: E731
    tiny = ["--tiny"] if cpu else []
    tests = (["tests/test_gpu.py", "tests/test_kernels.py", "-k", "1009 or poison or cuda"] if cpu
             else ["tests/test_gpu.py", "tests/test_kernels.py"])
    commands = dict(
        preflight=[py, "bench/preflight.py", *tiny, "--json", j("preflight")],
        tests=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        kernels=[py, "bench/loss_kernels.py", *tiny, "--json", j("kernels")],
        generate=[py, "bench/generate.py", *(tiny or ["--gpu"]), "--json", j("generate")],
        rollout_memory=[py, "bench/memory_check.py", "rollout", *tiny, "--json", j("rollout_memory")],
        update_memory=[py, "bench/memory_check.py", "update", *tiny, "--json", j("update_memory")],
        grpo_smoke=[py, "bench/grpo_smoke.py", "--json", j("grpo_smoke")])
    limits = LIMITS_CPU if cpu else LIMITS_GPU
    return [(name, commands[name], limits[name], None if name == "tests" else j(name)) for name in STEPS]


def _run(cmd, timeout=30):
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict:
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    except Exception as e:  # noqa: BLE001
        gpu, versions = f"unknown ({e})", {"torch": None, "cuda": None}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        versions["triton"] = None
    return {"gpu": gpu, **versions, "date": datetime.date.today().isoformat(),
            "commit": _run(["git", "rev-parse", "HEAD"]), "python": sys.version.split()[0],
            "nvidia_smi": _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"])}


def pytest_counts(text: str) -> dict:
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text):
        counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"), help="results folder (default $OUT)")
    ap.add_argument("--cpu", action="store_true", help="reduced mode for machines without a GPU (CI)")
    ap.add_argument("--budget", type=float, help=f"total seconds; steps past it are skipped (default {BUDGET_S}, "
                    f"{RERUN_BUDGET_S} with --only)")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = RERUN_BUDGET_S if args.only else BUDGET_S
    os.makedirs(args.out, exist_ok=True)
    import tempfile

    scratch = tempfile.mkdtemp(prefix="gpu_check-")
    t_start = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    if args.cpu:
        env["TRITON_INTERPRET"] = "1"
    result = {**environment(), "mode": "cpu" if args.cpu else "gpu", "seconds": 0.0, "steps": {}}
    path = os.path.join(args.out, "gpu_check.json")

    def save():
        result["seconds"] = round(time.time() - t_start, 1)
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)

    for name, cmd, limit, figures in steps(args.cpu, scratch):
        left = args.budget - (time.time() - t_start)
        if (args.only and name not in args.only) or left < 15:
            result["steps"][name] = {"status": "skipped", "seconds": 0.0,
                                     "reason": "not asked for" if args.only and name not in args.only
                                     else "time budget spent", "log_tail": ""}
            save()
            continue
        result["steps"][name] = {"status": "running", "seconds": 0.0, "command": " ".join(cmd[1:])}
        save()
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(limit, left))
            status, log = ("ok" if p.returncode == 0 else "failed"), p.stdout + p.stderr
            reason = None if p.returncode == 0 else f"exit status {p.returncode}"
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            status, log, reason = "failed", out, f"timed out after {min(limit, left):.0f} s"
        entry = {"status": status, "seconds": round(time.time() - t0, 1), "command": " ".join(cmd[1:])}
        if reason:
            entry["reason"] = reason
        if name == "tests":
            entry.update(pytest_counts(log[-3000:]))
        if figures and os.path.exists(figures):
            with open(figures) as f:
                entry.update({k: v for k, v in json.load(f).items() if k not in entry})
        entry["log_tail"] = log[-3000:]
        result["steps"][name] = entry
        save()
        print(f"[{name}] {status} in {entry['seconds']} s" + (f" ({reason})" if reason else ""), flush=True)
    print(f"wrote {path} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
