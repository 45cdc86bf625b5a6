"""The GPU check's first step: is this image able to run the GPU path at all? Seconds, not minutes.

    python bench/preflight.py --json out.json          # on the GPU machine (bench/gpu_check.py runs it first)
    python bench/preflight.py --tiny --json out.json   # CPU mode (CI): the same calls, CUDA-only checks skipped

Each check records ok / failed with its error and, when it fails, the escape hatch that avoids it:
    imports       torch, triton, transformers, tokenizers, safetensors, langid and every adamame module
    triton        one launch of the log-prob forward and backward kernels against the PyTorch reference
    sdpa          each attention call site (masked prefill, decode step, causal training forward) with its own inputs
                  in bf16 and fp32 as the code runs them: the aten backend op it dispatched to, and torch's
                  can_use_{flash,efficient,cudnn}_attention verdicts with debug=True (their warnings say why not)
    cuda_graph    one CUDA-graph capture of a 2-layer decode step, replayed against the eager step, and of the
                  step with the fused sampler inside it (tokens and log-probs against the eager step's)
The model has the attention shape of the paper's 1.5B model (12 query heads, 2 kv heads, head_dim 128) and 2 layers.
"""

import argparse
import json
import os
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HATCHES = {"triton": "ADAMAME_KERNELS=torch", "sdpa": "ADAMAME_SDPA=any (or =math)",
           "cuda_graph": "ADAMAME_CUDA_GRAPHS=0 (ADAMAME_SAMPLER=torch if only the fused step fails)",
           "imports": "carry the missing wheel in .whl/ (bench/gpu_wheels.sh)"}
SHAPE = dict(model_type="qwen2", vocab_size=1024, hidden_size=1536, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)
TINY = {**SHAPE, "hidden_size": 96, "num_attention_heads": 6, "intermediate_size": 64}


def check_imports(ctx):
    import importlib

    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "tokenizers", "safetensors", "langid", "sympy", "numpy", "tqdm"):
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    for name in ("model", "generate", "grpo_kernels", "lora", "dist", "memory", "rewards", "language", "answer",
                 "scoring", "rollout", "checkpoint", "data", "chat", "toy"):
        importlib.import_module(f"adamame.{name}")
    return versions


def check_triton(ctx):
    import torch

    from adamame import grpo_kernels as kernels

    if ctx["device"] == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return {"skipped": "no GPU and no TRITON_INTERPRET"}
    os.environ["ADAMAME_KERNELS"] = "triton"
    try:
        x = torch.randn(8, 5000, device=ctx["device"], dtype=ctx["dtype"], requires_grad=True)
        t = torch.randint(0, 5000, (8,), device=ctx["device"])
        lp = kernels.token_logprobs(x * 1.0, t, inplace=False)
        ref = kernels.token_logprobs_torch(x.detach().float(), t)
        lp.sum().backward()
        err = (lp.detach() - ref).abs().max().item()
        from adamame.decode_attention import decode_attention, decode_attention_torch

        dev = ctx["device"]
        q = torch.randn(3, 12, 128, device=dev, dtype=ctx["dtype"])
        k, v = (torch.randn(3 * 19 * 32, 2, 128, device=dev, dtype=ctx["dtype"]) for _ in range(2))  # 19 blocks a row
        table = torch.randperm(3 * 19, device=dev).view(3, 19).to(torch.int32)
        start, end = (torch.tensor(x, dtype=torch.int32, device=dev) for x in ([0, 7, 3], [600, 300, 3]))
        # the cascade too: each row reads its own first slots as its "prompt"
        members = torch.tensor([[r] + [-1] * 7 for r in range(3)], dtype=torch.int32, device=dev)
        pend = torch.tensor([64, 40, 3], dtype=torch.int32, device=dev)
        want = decode_attention_torch(q, k, v, table, start, end).float()
        att = max((decode_attention(q, k, v, table, start, end, 128 ** -0.5, *g).float() - want).abs().max().item()
                  for g in ((), (members, pend)))
    finally:
        os.environ.pop("ADAMAME_KERNELS")
    assert err < 2e-2, f"log-probs differ from the reference by {err}"
    assert att < 2e-2, f"decode attention differs from the reference by {att}"
    return {"max_abs_err": err, "grad_finite": bool(torch.isfinite(x.grad).all()), "decode_attention_err": att}


def _model(ctx, dtype):
    import torch

    from adamame.model import ModelConfig, Transformer

    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(ctx["shape"])).to(dtype)
    model.to_empty(device=ctx["device"])
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
    return model


def check_sdpa(ctx):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from adamame.model import KVCache, PagedKVCache

    class Backend(TorchDispatchMode):  # the aten op SDPA dispatched to names the backend that ran
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            if "scaled_dot_product" in name or name in ("aten::_safe_softmax", "aten::_softmax"):
                self.seen.append(name.removeprefix("aten::"))
            return func(*args, **(kwargs or {}))

    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        calls.append((q, k, v, attn_mask, is_causal, enable_gqa))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)

    def verdicts(q, k, v, mask, causal, gqa):
        if ctx["device"] != "cuda":
            return {}
        from torch.backends.cuda import (SDPAParams, can_use_cudnn_attention, can_use_efficient_attention,
                                         can_use_flash_attention)

        try:
            params = SDPAParams(q, k, v, mask, 0.0, causal, gqa)
        except (TypeError, RuntimeError) as e:  # its signature changes between torch versions
            return {"unavailable": f"{type(e).__name__}: {e}"[:200]}
        out = {}
        for name, fn in (("flash", can_use_flash_attention), ("efficient", can_use_efficient_attention),
                         ("cudnn", can_use_cudnn_attention)):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                ok = fn(params, debug=True)
            out[name] = True if ok else "; ".join(str(x.message).strip()[:200] for x in w) or False
        return out

    sites, failures = {}, []
    torch.nn.functional.scaled_dot_product_attention = recording
    try:
        for dtype in (torch.bfloat16, torch.float32):
            model = _model(ctx, dtype)
            cfg, dev, dn = model.config, ctx["device"], str(dtype).removeprefix("torch.")
            ids = torch.randint(0, cfg.vocab_size, (3, 40), device=dev)
            mask = torch.ones(3, 40, dtype=torch.bool, device=dev)
            mask[1, :17] = False
            runs = {
                "prefill": lambda: model(ids, mask=mask, cache=KVCache.allocate(cfg, 3, 40, dtype, dev),
                                         logits_at=slice(-1, None)),
                "decode step": lambda: model.decode_step(ids[:, 0], torch.full((3,), 40, device=dev),
                                                         PagedKVCache.static(cfg, 3, 256, dtype, dev),
                                                         torch.full((3,), 40, device=dev), 3, 256),
            }
            if dtype == torch.bfloat16:  # the training forward runs in bf16 on a GPU (FSDP's mixed precision)
                runs["training forward"] = lambda: model(ids).float().square().mean().backward()
            for site, run in runs.items():
                key = f"{site} ({dn})"
                rec = Backend()
                calls.clear()
                # on CUDA the decode step attends with the Triton kernel (checked above); this checks its SDPA hatch
                before, os.environ["ADAMAME_KERNELS"] = os.environ.get("ADAMAME_KERNELS"), "torch"
                try:
                    with rec, torch.no_grad() if site != "training forward" else torch.enable_grad():
                        run()
                    q, k, v, m, causal, gqa = calls[-1]
                    sites[key] = {"backend": sorted(set(rec.seen)), "q": list(q.shape), "k": list(k.shape),
                                  "mask": None if m is None else [list(m.shape), str(m.dtype)],
                                  "can_use": verdicts(q, k, v, m, causal, gqa)}
                except Exception as e:  # noqa: BLE001
                    sites[key] = {"error": f"{type(e).__name__}: {str(e).strip()[:400]}"}
                    failures.append(key)
                finally:
                    if before is None:
                        del os.environ["ADAMAME_KERNELS"]
                    else:
                        os.environ["ADAMAME_KERNELS"] = before
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    if failures:
        raise RuntimeError(f"attention failed at {', '.join(failures)}: {json.dumps(sites)[:1500]}")
    return {"sites": sites}


def check_cuda_graph(ctx):
    import torch

    from adamame.generate import Decoder
    from adamame.model import PagedKVCache

    if ctx["device"] != "cuda":
        return {"skipped": "no GPU"}
    model = _model(ctx, torch.bfloat16)
    cfg = model.config
    cache = PagedKVCache.static(cfg, 8, 512, torch.bfloat16, "cuda")
    tokens = torch.randint(0, cfg.vocab_size, (8,), device="cuda")
    positions = torch.full((8,), 100, device="cuda")
    with torch.no_grad():
        eager = Decoder(model, cache, cuda_graphs=False)(tokens, positions, positions, 100).clone()
        graphed = Decoder(model, cache, cuda_graphs=True)
        t0 = time.perf_counter()
        got = graphed(tokens, positions, positions, 100).clone()
        torch.cuda.synchronize()
    err = (got - eager).abs().max().item()
    assert err < 5e-2, f"graph replay differs from the eager step by {err}"
    capture_s = round(time.perf_counter() - t0, 3)
    # the rollout's step: the fused sampler (a Triton kernel and its merge) captured inside the same graph
    from types import SimpleNamespace

    from adamame.sampler import seed_tensor

    keys = (SimpleNamespace(temperature=0.8, seed_t=seed_tensor(5, "cuda"), inv_t=torch.tensor([1.25], device="cuda")),
            torch.arange(8, device="cuda"), torch.zeros(8, dtype=torch.long, device="cuda"))
    with torch.no_grad():
        e_tok, e_lp = (t.clone() for t in Decoder(model, cache, cuda_graphs=False)(tokens, positions, positions, 100,
                                                                                   fused=keys))
        g_tok, g_lp = (t.clone() for t in graphed(tokens, positions, positions, 100, fused=keys))
        torch.cuda.synchronize()
    same = int((e_tok == g_tok).sum())
    assert same >= 7, f"the fused sampler's tokens under graph replay differ from the eager step's ({same} of 8 equal)"
    return {"max_abs_err": err, "capture_s": capture_s, "graphs": len(graphed.graphs), "fused_tokens_equal": same,
            "fused_logp_err": (e_lp - g_lp).abs().max().item()}


CHECKS = (("imports", check_imports), ("triton", check_triton), ("sdpa", check_sdpa), ("cuda_graph", check_cuda_graph))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--tiny", action="store_true", help="CPU mode: small shapes, CUDA-only checks skipped")
    args = ap.parse_args(argv)
    from adamame.dist import allocator_defaults

    allocator_defaults()  # the allocator the trainers run with (expandable segments), before any CUDA allocation
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    ctx = {"device": "cuda" if cuda else "cpu", "dtype": torch.bfloat16 if cuda else torch.float32,
           "shape": SHAPE if cuda else TINY}
    result, failed = {"device": torch.cuda.get_device_name() if cuda else "cpu", "checks": {}}, []
    for name, fn in CHECKS:
        t0 = time.perf_counter()
        try:
            entry = {"status": "ok", **(fn(ctx) or {})}
            if "skipped" in entry:
                entry["status"] = "skipped"
        except Exception as e:  # noqa: BLE001  (every failure is a finding, the next check still runs)
            entry = {"status": "failed", "error": f"{type(e).__name__}: {str(e).strip()[:1500]}",
                     "hatch": HATCHES[name], "trace": traceback.format_exc()[-1500:]}
            failed.append(name)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        result["checks"][name] = entry
        result["failed"] = failed
        if args.json:  # after every check: a time-out keeps what finished
            with open(args.json + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
            os.replace(args.json + ".tmp", args.json)
        print(f"[preflight] {name}: {entry['status']}" + (f" ({entry['error'][:200]}; try {entry['hatch']})"
                                                           if entry["status"] == "failed" else ""), flush=True)
    result["allocator"] = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
