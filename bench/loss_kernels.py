"""Fused log-prob / GRPO-loss kernels against eager PyTorch, Liger-Kernel's Triton GRPO loss and torch.compile, in
one process.

For each N (tokens) x V (vocab) in bf16: the forward log-probs and the loss forward + backward (Dr. GRPO, clip 0.2,
k3 KL with beta 0.04), time (median of repeats) beside the step model's prediction (bytes moved at the model's
bandwidth for the card: 3.0 TB/s on an H100, 4.3 on an H200), peak memory beyond the logits themselves, and achieved bandwidth
as a fraction of the card's: bytes moved are one read of the logits for the forward, a read in the forward plus a
read and a write in the backward for the loss. The denominator is the device-to-device copy bandwidth measured here
(the datasheet figure is reported too). "ours" is the fused GRPO loss kernel, "unfused" the log-prob kernel followed by
policy_loss in PyTorch (the trainer before the fused loss). Liger's loss runs where `liger_kernel` is importable (bench/gpu_wheels.sh
carries it); torch.compile runs last, since its compilation is the slowest part. Results are written after every
row, so a time-out keeps what was measured.

    python bench/loss_kernels.py --json out.json                   # GPU: N = 32,768 x V = 151,936, bf16
    python bench/loss_kernels.py --tiny --json out.json            # CPU smoke mode (Triton interpreter, tiny shapes)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATASHEET_BW = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12, "L40S": 0.864e12, "A10": 0.6e12}
TEMPERATURE, BETA, EPS = 0.8, 0.04, 0.2
MODEL_BW = {"H100": 3.0e12, "H200": 4.3e12}  # the step models' copy bandwidths (bench/generate.py's BANDWIDTHS)


def datasheet_bandwidth(name: str):
    return next((bw for key, bw in DATASHEET_BW.items() if key in name), None)


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra(fn, device):
    import torch

    if device != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - base


def liger():
    """Liger-Kernel's fused selective log-softmax and Triton GRPO loss, or None when not installed."""
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception:  # not installed, or an incompatible version
        return None
    return fused_selective_log_softmax, triton_grpo_loss


def sides(compile_):
    """{name: (extra positions, log-prob forward, loss forward+backward)}. Each side gets its natural layout: ours
    [B, L, V] logits at the response positions (what the trainer makes), Liger's [B, L + 1, V] (it drops the last
    position itself); the functions take (logits, ids [B, L + extra], adv, mask, old, ref) and return a tensor."""
    import torch

    from adamame.grpo_kernels import grpo_loss, grpo_loss_torch, policy_loss, token_logprobs, token_logprobs_torch

    def ours_loss(loss_fn):
        def run(logits, ids, adv, mask, old, ref):
            loss, _ = loss_fn(logits, ids, adv, mask, temperature=TEMPERATURE, old_logprobs=old, ref_logprobs=ref,
                              clip_eps=EPS, beta=BETA, aggregation="dr_grpo", max_tokens=mask.shape[1])
            return torch.autograd.grad(loss, logits)[0]
        return run

    def logprob_then_loss(logits, ids, *rest, **kw):  # the trainer before the fused loss: kernel, then PyTorch
        return policy_loss(token_logprobs(logits, ids, kw.pop("temperature")), *rest, **kw)

    out = {"ours": (0, lambda z, ids, *_: token_logprobs(z, ids, TEMPERATURE), ours_loss(grpo_loss)),
           "unfused": (0, lambda z, ids, *_: token_logprobs(z, ids, TEMPERATURE), ours_loss(logprob_then_loss)),
           "eager": (0, lambda z, ids, *_: token_logprobs_torch(z, ids, TEMPERATURE), ours_loss(grpo_loss_torch))}
    lg = liger()
    if lg is not None:
        fwd, loss = lg

        def liger_loss(logits, ids, adv, mask, old, ref):
            res = loss(logits, old, ref, ids[:, 1:].contiguous(), adv, mask.float(), temperature=TEMPERATURE,
                       beta=BETA, eps_low=EPS, eps_high=EPS, inplace=True, loss_type="dr_grpo",
                       max_completion_length=mask.shape[1], reduce=True)
            return torch.autograd.grad(res[0], logits)[0]

        out["liger"] = (1, lambda z, ids, *_: fwd(z, ids, TEMPERATURE), liger_loss)
    if compile_:
        lp_c, loss_c = torch.compile(token_logprobs_torch), torch.compile(grpo_loss_torch)
        out["compile"] = (0, lambda z, ids, *_: lp_c(z, ids, TEMPERATURE), ours_loss(loss_c))
    return out


def bench(device, N, V, repeats, compile_, on_row):
    """Every side on the same random logits. The backward of ours and Liger's overwrites the logits with their
    gradient; later repeats then run on those values, which costs the same."""
    import torch

    B = 16
    L = N // B
    nbytes = B * L * V * 2
    for name, (extra, fwd, loss) in sides(compile_).items():
        torch.manual_seed(0)
        try:
            logits = (torch.randn(B, L + extra, V, device=device, dtype=torch.float32) * 2).to(torch.bfloat16)
        except Exception as e:
            on_row({"impl": name, "kernel": "setup", "N": B * L, "V": V, "dtype": "bfloat16", "time_ms": None,
                    "bytes_moved": None, "gb_per_s": None, "peak_extra_bytes": None, "error": str(e)[:160]})
            continue
        logits.requires_grad_(True)
        ids = torch.randint(0, V, (B, L + extra), device=device)
        adv = torch.randn(B, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        old = torch.zeros(B, L, device=device) - 11.5
        ref = torch.zeros(B, L, device=device) - 12.0
        for kind, fn, moved in (("logprob_fwd", lambda: fwd(logits.detach(), ids, adv, mask, old, ref), nbytes),
                                ("loss_fwd_bwd", lambda: loss(logits, ids, adv, mask, old, ref), 3 * nbytes)):
            try:
                t = timed(fn, device, repeats)
                mem = peak_extra(fn, device)
                err = None
            except Exception as e:  # an OOM on the eager side is itself a result
                t, mem, err = None, None, f"{type(e).__name__}: {str(e)[:160]}"
            if device == "cuda":
                torch.cuda.empty_cache()
            on_row({"impl": name, "kernel": kind, "N": B * L, "V": V, "dtype": "bfloat16",
                    "time_ms": t and t * 1e3, "bytes_moved": moved, "gb_per_s": t and moved / t / 1e9,
                    "peak_extra_bytes": mem, "error": err})
        del logits
        if device == "cuda":
            torch.cuda.empty_cache()


def copy_bandwidth(device):
    if device != "cuda":
        return None
    from bench.generate import copy_bandwidth as measure

    return measure()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[32768], help="N values (default 32,768)")
    ap.add_argument("--vocab", type=int, default=151_936, help="V (default 151,936: Qwen)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: N=32, V=1,009, Triton interpreter")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--json", help="write the results here (rewritten after every row)")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["ADAMAME_KERNELS"] = "triton"
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    copy_bw = copy_bandwidth(device)
    sheet_bw = datasheet_bandwidth(gpu or "")
    result = {"device": gpu or "cpu", "copy_bandwidth": copy_bw, "datasheet_bandwidth": sheet_bw,
              "torch": torch.__version__, "liger": liger() is not None, "rows": []}

    model_bw = next((bw for key, bw in MODEL_BW.items() if key in (gpu or "")), None)

    def on_row(r):  # the step model (bench/step.py) prices the kernel at bytes moved / the card's model bandwidth
        r["predicted_ms"] = r["bytes_moved"] / model_bw * 1e3 if (model_bw and r["bytes_moved"]) else None
        r["frac_copy_bw"] = r["gb_per_s"] * 1e9 / copy_bw if (copy_bw and r["gb_per_s"]) else None
        r["frac_peak_bw"] = r["gb_per_s"] * 1e9 / sheet_bw if (sheet_bw and r["gb_per_s"]) else None
        ours = next((x for x in result["rows"] if x["impl"] == "ours" and x["kernel"] == r["kernel"]
                     and x["N"] == r["N"]), None)
        r["time_vs_ours"] = r["time_ms"] / ours["time_ms"] if (ours and ours["time_ms"] and r["time_ms"]) else None
        result["rows"].append(r)
        fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
        print(f"{r['impl']:8} {r['kernel']:13} {r['N']:6d} {r['V']:7d} {fmt(r['time_ms'], '%9.3f'):>9} ms "
              f"{fmt(r['gb_per_s'], '%8.1f'):>8} GB/s {fmt(r['frac_copy_bw'] and 100 * r['frac_copy_bw'], '%5.1f')}% "
              f"of copy bw, extra {fmt(r['peak_extra_bytes'] and r['peak_extra_bytes'] / 2**20, '%.1f')} MiB"
              + (f"  {r['error']}" if r["error"] else ""), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    print(f"device: {gpu or platform.processor() or 'cpu'}  copy bandwidth: {copy_bw and copy_bw / 1e12:.2f} TB/s  "
          f"torch {torch.__version__}  liger: {result['liger']}" if copy_bw else
          f"device: {gpu or platform.processor() or 'cpu'}  torch {torch.__version__}  liger: {result['liger']}")
    shapes = [(32, 1_009)] if args.tiny else [(n, args.vocab) for n in args.tokens]
    for N, V in shapes:
        bench(device, N, V, 1 if args.tiny else args.repeats, not args.no_compile and device == "cuda", on_row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
