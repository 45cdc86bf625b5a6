"""Fused log-prob / GRPO-loss kernels against eager PyTorch and torch.compile of the same, in one process.

For each N (tokens) x V (vocab) in bf16: forward log-prob time, loss forward+backward time, peak extra memory
(beyond the logits tensor itself), and achieved bandwidth as a fraction of the device's peak. Gradients are taken
with torch.autograd.grad on the logits, as the lm_head output would receive them in training.

    python bench/kernels.py                       # GPU: N in 4k, 16k, 32k x V = 151,936, bf16
    python bench/kernels.py --tiny --json out.json  # CPU smoke mode (interpreter, tiny shapes)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BW = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12, "L40S": 0.864e12, "A10": 0.6e12}


def peak_bandwidth(name: str):
    for key, bw in PEAK_BW.items():
        if key in name:
            return bw
    return None


def timed(fn, device, repeats):
    import torch

    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra(fn, device):
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench(device, N, V, repeats, compile_):
    import torch

    from adamame.kernels import grpo_loss, grpo_loss_torch, token_logprobs, token_logprobs_torch

    torch.manual_seed(0)
    B = 16
    L = N // B
    logits = (torch.randn(B, L, V, device=device, dtype=torch.float32) * 2).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, V, (B, L), device=device)
    adv = torch.randn(B, device=device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    old = torch.zeros(B, L, device=device) - 12.0
    nbytes = logits.numel() * logits.element_size()

    def fwd(f):
        return lambda: f(logits.detach(), targets)

    def fwd_bwd(f):
        def run():
            loss, _ = f(logits, targets, adv, mask, old_logprobs=old, max_tokens=L)
            torch.autograd.grad(loss, logits)
        return run

    sides = {"ours": (token_logprobs, grpo_loss), "eager": (token_logprobs_torch, grpo_loss_torch)}
    if compile_:
        sides["compile"] = (torch.compile(token_logprobs_torch), torch.compile(grpo_loss_torch))
    rows = []
    for name, (lp_fn, loss_fn) in sides.items():
        for kind, fn, moved in (("logprob_fwd", fwd(lp_fn), nbytes), ("loss_fwd_bwd", fwd_bwd(loss_fn), 3 * nbytes)):
            try:
                t = timed(fn, device, repeats)
                mem = peak_extra(fn, device)
                err = None
            except Exception as e:  # an OOM on the eager side is itself a result
                t, mem, err = None, None, f"{type(e).__name__}: {str(e)[:120]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append({"impl": name, "kernel": kind, "N": N, "V": V, "dtype": "bfloat16", "time_ms": t and t * 1e3,
                         "bytes_moved": moved, "gb_per_s": t and moved / t / 1e9, "peak_extra_bytes": mem,
                         "error": err})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 32768], help="N values (default 4k 16k 32k)")
    ap.add_argument("--vocab", type=int, default=151_936, help="V (default 151,936: Qwen)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: N=32, V=1,009, Triton interpreter")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["ADAMAME_KERNELS"] = "triton"
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    peak = peak_bandwidth(gpu or "")
    shapes = [(32, 1_009)] if args.tiny else [(n, args.vocab) for n in args.tokens]
    rows = []
    for N, V in shapes:
        rows += bench(device, N, V, 1 if args.tiny else args.repeats, compile_=not args.no_compile and device == "cuda")
    eager = {(r["kernel"], r["N"]): r["time_ms"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        r["frac_peak_bw"] = r["gb_per_s"] * 1e9 / peak if (peak and r["gb_per_s"]) else None
        e = eager.get((r["kernel"], r["N"]))
        r["time_vs_eager"] = r["time_ms"] / e if (r["time_ms"] and e) else None
    print(f"device: {gpu or platform.processor() or 'cpu'}  peak bandwidth: {peak and peak / 1e12} TB/s  "
          f"torch {torch.__version__}")
    print(f"{'impl':8} {'kernel':13} {'N':>6} {'V':>7} {'ms':>9} {'GB/s':>8} {'%peak':>6} {'extra MB':>9} {'ours/eager':>10}")
    for r in rows:
        fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
        print(f"{r['impl']:8} {r['kernel']:13} {r['N']:6d} {r['V']:7d} {fmt(r['time_ms'], '%9.3f'):>9} "
              f"{fmt(r['gb_per_s'], '%8.1f'):>8} {fmt(r['frac_peak_bw'] and 100 * r['frac_peak_bw'], '%5.1f'):>6} "
              f"{fmt(r['peak_extra_bytes'] and r['peak_extra_bytes'] / 2**20, '%9.1f'):>9} "
              f"{fmt(r['time_vs_eager'], '%10.3f'):>10}" + (f"  {r['error']}" if r["error"] else ""))
    result = {"device": gpu or "cpu", "peak_bandwidth": peak, "torch": torch.__version__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
