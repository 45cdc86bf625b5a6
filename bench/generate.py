"""Generation throughput: adamame.generate against transformers' generate on the same model, in one process.

Both sides get the same random-weight model (built by transformers, copied into ours), the same left-padded
prompts and the same settings (sampling at temperature 1, n samples per prompt, no stop token, a fixed number
of new tokens). Reports tokens/s, peak memory and the ratio ours / transformers; on a GPU also the fraction of
the memory-bandwidth bound (weights + KV cache read once per decode step).

    python bench/generate.py                 # CPU: ~40M-parameter Qwen2, 32 prompts x 8 samples x 128 tokens
    python bench/generate.py --tiny          # CPU smoke mode (seconds)
    python bench/generate.py --gpu           # CUDA: Qwen2.5-1.5B shapes, batch 1 and 256 prompts x ~1k context
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CPU_MODEL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
TINY_MODEL = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)


def build(shape, device, dtype):
    """A random transformers Qwen2 model and ours with the same weights."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from adamame.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, max_position_embeddings=4096)
    with torch.device(device):
        hf = Qwen2ForCausalLM(cfg).to(dtype).eval()
    with torch.device("meta"):
        ours = Transformer(ModelConfig.from_dict(cfg.to_dict()))
    ours.to_empty(device=device).to(dtype)
    ours.load_state_dict(hf.state_dict(), strict=False)  # strict=False: tied lm_head.weight appears once
    return hf, ours.eval()


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the process's peak RSS on Linux (reset via clear_refs)."""

    def __init__(self, device):
        self.device, self.peak = device, None

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/clear_refs"):
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif os.path.exists("/proc/self/status"):
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024


def run_case(hf, ours, device, n_prompts, n, ctx, new_tokens, compile_=False, repeats=1):
    import torch

    from adamame.generate import generate

    g = torch.Generator().manual_seed(1)
    V = ours.config.vocab_size
    lens = torch.randint(max(1, ctx // 2), ctx + 1, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(1, V, (k,), generator=g).tolist() for k in lens]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def ours_run():
        return generate(ours, prompts, max_new_tokens=new_tokens, n=n, temperature=1.0, seed=0, compile=compile_)

    def hf_run():
        T = max(lens)
        ids = torch.zeros(n_prompts, T, dtype=torch.long)
        mask = torch.zeros(n_prompts, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
        out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0,
                          top_p=1.0, top_k=0, num_return_sequences=n, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
        return out

    result = {"prompts": n_prompts, "n": n, "context": ctx, "new_tokens": new_tokens, "compile": compile_}
    for name, fn in (("ours", ours_run), ("transformers", hf_run)):
        if name == "ours" and compile_:
            fn()  # compile warm-up outside the timed region
        times = []
        for _ in range(repeats):
            with PeakMemory(device) as pm:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
        t = min(times)
        result[name] = {"seconds": t, "tokens_per_s": n_prompts * n * new_tokens / t, "peak_bytes": pm.peak}
    result["speedup_vs_transformers"] = result["ours"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    return result


def bandwidth_bound(ours, batch, ctx, dtype_bytes, peak_bw):
    """Tokens/s if each decode step only read the weights once and the KV cache of `batch` rows at `ctx`."""
    cfg = ours.config
    weights = sum(p.numel() for p in ours.parameters()) * dtype_bytes
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes
    step_bytes = weights + batch * ctx * kv_per_token
    return batch * peak_bw / step_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: a tiny model, 4 prompts x 2 x 8 tokens")
    ap.add_argument("--gpu", action="store_true", help="CUDA mode: Qwen2.5-1.5B shapes in bf16")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    if args.gpu:
        from bench.kernels import peak_bandwidth

        dev, dtype = "cuda", torch.bfloat16
        hf, ours = build(QWEN25_15B, dev, dtype)
        gpu = torch.cuda.get_device_name()
        peak = peak_bandwidth(gpu)
        cases = [run_case(hf, ours, dev, 1, 1, 16, 256, compile_=c) for c in (False, True)]
        cases += [run_case(hf, ours, dev, 256, 1, 1024, 128, compile_=False)]
        for c in cases:
            batch = c["prompts"] * c["n"]
            bound = bandwidth_bound(ours, batch, c["context"] + c["new_tokens"] // 2, 2, peak) if peak else None
            c["bandwidth_bound_tokens_per_s"] = bound
            c["frac_of_bound"] = c["ours"]["tokens_per_s"] / bound if bound else None
        device = gpu
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        shape, (P, n, ctx, new) = (TINY_MODEL, (4, 2, 16, 8)) if args.tiny else (CPU_MODEL, (32, 8, 64, 128))
        hf, ours = build(shape, "cpu", torch.float32)
        cases = [run_case(hf, ours, "cpu", P, n, ctx, new)]
        device = platform.processor() or platform.machine()
    params = sum(p.numel() for p in ours.parameters())
    print(f"device: {device}  torch {torch.__version__}  model: qwen2, {params / 1e6:.1f}M parameters, "
          f"{next(ours.parameters()).dtype}")
    for c in cases:
        o, h = c["ours"], c["transformers"]
        mem = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"  # noqa: E731
        extra = f"  {100 * c['frac_of_bound']:.0f}% of bandwidth bound" if c.get("frac_of_bound") else ""
        print(f"{c['prompts']} prompts x {c['n']} samples x {c['new_tokens']} new tokens, prompts <= {c['context']}"
              f"{' (compiled)' if c['compile'] else ''}: ours {o['tokens_per_s']:.0f} tok/s ({mem(o['peak_bytes'])}), "
              f"transformers {h['tokens_per_s']:.0f} tok/s ({mem(h['peak_bytes'])}), "
              f"ours/transformers = {c['speedup_vs_transformers']:.2f}x{extra}")
    result = {"device": device, "torch": torch.__version__, "parameters": params, "cases": cases}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
