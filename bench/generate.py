"""Generation throughput: adamame.generate against transformers' generate on the same model, in one process.

Both sides get the same random-weight model (built by transformers, copied into ours), the same left-padded prompts
and the same settings (sampling at temperature 1, n samples per prompt, no stop token, a fixed number of new
tokens). Reports tokens/s, peak memory and the ratio ours / transformers; on a GPU also the fraction of the
memory-bandwidth bound and the host (CPU) time per decode step. The bound of a case: every decode step reads the
weights once and each row's KV cache up to its current length (the bytes a step must read), at the copy bandwidth
measured in this process.

    python bench/generate.py                 # CPU: ~40M-parameter Qwen2, 32 prompts x 8 samples x 128 tokens
    python bench/generate.py --tiny          # CPU smoke mode (seconds)
    python bench/generate.py --gpu           # CUDA: Qwen2.5-1.5B shapes in bf16: batch 1, and 512 rows x
                                             #       (256-token prompts + 1,024 new), CUDA graphs and eager; a
                                             #       refilled rollout against the step-time model
    python bench/generate.py --reads         # no model: the bytes a paper-shape rollout's decode steps read, and
                                             #       the step-time model of one GPU's rollout

--reads replays the engine's schedule (adamame.generate.kv_reads: buckets, compaction, which rows read what) for one
GPU's rollout at the paper's shape (DeepSeek-R1-Distill-Qwen-1.5B in bf16, 64 prompts x 8 samples = 512 rows, up to
512 prompt and 4,096 response tokens). Prompt lengths: the shared RL prompts' characters / CHARS_PER_TOKEN plus
TEMPLATE_TOKENS (../shared/data/rl/train.jsonl; without it, uniform in [60, 400]); response lengths: a share
TRUNCATED hits 4,096, the others uniform in [256, 4,096). It prints, for the engine before the decode kernel (SDPA,
power-of-two row buckets), SDPA with today's row buckets (ADAMAME_KERNELS=torch) and the engine as it now runs on CUDA
(the Triton decode kernel; what it loads is each active row's range, as its counting build shows in
tests/test_decode_attention.py): KV bytes read, the bytes that belong to a live row's own valid slots, their ratio, the
weight bytes, bytes per generated token, and the predicted decode time at H100 3.0 TB/s and H200 4.3 TB/s against
the bound (useful KV + one weight read per step).

It then models one GPU's rollout step by step (`step_time_model`) for both paper models at that shape, with the
memory plan's rows on 8 x 80 GiB: today's engine (one generate call of all 512 rows, refilled rows never idle) and
the schedule before it (calls of the plan's rows rounded down to whole prompts, each run until its longest row ends).
A decode step costs max(bytes / 3.0e12, FLOPs / 790e12) + 20 us (an H100's measured copy bandwidth and bf16 matmul
rate), its bytes the weights read (all but the input embedding), the KV each row reads with the decode kernel, each
layer's temporaries written and read once, the logits and the sampler's temporaries as the code moves them (bytes
per vocabulary entry: LOGIT_BYTES, SAMPLER_BYTES) and compaction's copies; prefill runs at the peak FLOP rate. Its
last line: `predicted rollout per GPU (H100 model): ...`. --gpu measures a refilled rollout (16 prompts x 8 in 64
rows, response lengths forced to the workload's distribution up to 512 tokens) against the same model's prediction
at the bandwidth measured in the process, and the fused sampler against PyTorch's at 512 rows x 151,936.
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


def copy_bandwidth(device="cuda", nbytes=2**30) -> float:
    """Achievable HBM bandwidth, bytes/s: a device-to-device copy (read + write) of `nbytes`, best of 5."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def bound_tokens_per_s(ours, rows, prompt_len, new_tokens, bandwidth) -> float:
    """Tokens/s if every decode step read only the weights and each row's KV cache up to its length."""
    cfg = ours.config
    elem = next(ours.parameters()).element_size()
    weights = sum(p.numel() for p in ours.parameters()) * elem
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem
    total = sum(weights + rows * (prompt_len + t) * kv_token for t in range(new_tokens))
    return rows * new_tokens / (total / bandwidth)


def host_ms_per_step(ours, rows, prompt_len, graphs, steps=30) -> float:
    """Host time to issue one decode step (sampling + the step), measured with an empty device queue."""
    import torch

    from adamame.generate import Decoder, sample_next
    from adamame.model import KVCache

    cfg = ours.config
    dev = next(ours.parameters()).device
    cache = KVCache.allocate(cfg, rows, prompt_len + steps + 2, next(ours.parameters()).dtype, dev)
    cache.valid[:, :prompt_len] = True
    dec = Decoder(ours, cache, cuda_graphs=graphs)
    tok = torch.zeros(rows, dtype=torch.long, device=dev)
    pos = torch.full((rows,), prompt_len, dtype=torch.long, device=dev)
    slot = torch.full((rows,), prompt_len, dtype=torch.long, device=dev)
    logits = dec(tok, pos, slot, prompt_len)  # captures the graph (or warms up)
    times = []
    for t in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tok, _ = sample_next(logits, 1.0)
        logits = dec(tok, pos + t + 1, slot + t + 1, prompt_len + t + 1)
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    times.sort()
    return 1e3 * times[len(times) // 2]


def attention_case(rows, n_kv, rep, head_dim, slots, lengths, device, dtype, repeats=20) -> dict:
    """One layer's decode attention, the Triton kernel against SDPA as the decode step calls it (the rep query heads
    folded into the query axis, an additive bias over the bucket's slots; memory-efficient backend on CUDA). Row r
    reads slots [start_r, lengths[r]) (0: a finished row), start_r a left padding of 0-63 slots. Useful bytes: K and V
    of every row's valid slots, what an exact kernel must read."""
    import torch

    from adamame.decode_attention import decode_attention, num_splits
    from adamame.model import attention

    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(rows, n_kv * rep, head_dim, generator=g).to(device, dtype)
    k, v = (torch.randn(rows, n_kv, slots, head_dim, generator=g).to(device, dtype) for _ in range(2))
    end = torch.tensor(lengths, dtype=torch.int32)
    start = torch.minimum(torch.randint(0, 64, (rows,), generator=g, dtype=torch.int32), end)
    start, end = start.to(device), end.to(device)
    slot = torch.arange(slots, device=device)
    valid = (slot >= start[:, None]) & (slot < end[:, None])
    bias = torch.zeros(rows, 1, 1, slots, dtype=dtype, device=device).masked_fill_(~valid[:, None, None], float("-inf"))
    qg = q.view(rows, n_kv, rep, head_dim)
    runs = {"ours": lambda: decode_attention(q, k, v, start, end, head_dim ** -0.5),
            "sdpa": lambda: attention(qg, k, v, bias)}
    out = {"rows": rows, "n_kv": n_kv, "rep": rep, "head_dim": head_dim, "slots": slots, "dtype": str(dtype)[6:],
           "splits": num_splits(rows, n_kv, slots),
           "useful_bytes": int(2 * (end - start).sum()) * n_kv * head_dim * q.element_size()}
    ref = runs["sdpa"]().reshape(rows, n_kv * rep, head_dim).float()
    out["max_abs_diff"] = float((runs["ours"]().float() - ref).abs().max())
    for name, fn in runs.items():
        fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * sorted(times)[len(times) // 2]
    out["sdpa_vs_ours"] = out["sdpa_ms"] / out["ours_ms"]
    return out


def run_case(hf, ours, device, n_prompts, n, ctx, new_tokens, graphs=None, fixed_len=False, hf_static=False):
    import torch

    from adamame.generate import generate

    g = torch.Generator().manual_seed(1)
    V = ours.config.vocab_size
    lens = [ctx] * n_prompts if fixed_len else torch.randint(max(1, ctx // 2), ctx + 1, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(1, V, (k,), generator=g).tolist() for k in lens]
    stats = {}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def ours_run():
        stats.clear()
        return generate(ours, prompts, max_new_tokens=new_tokens, n=n, temperature=1.0, seed=0, cuda_graphs=graphs,
                        stats=stats)

    def hf_run():
        T = max(lens)
        ids = torch.zeros(n_prompts, T, dtype=torch.long)
        mask = torch.zeros(n_prompts, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
        extra = dict(cache_implementation="static", disable_compile=True) if hf_static else {}
        return hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0,
                           top_p=1.0, top_k=0, num_return_sequences=n, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None, **extra)

    result = {"prompts": n_prompts, "n": n, "rows": n_prompts * n, "context": ctx, "new_tokens": new_tokens,
              "cuda_graphs": bool(graphs) if graphs is not None else device == "cuda"}
    if device == "cuda":
        ours_run()  # warm-up: cuBLAS handles, allocator; graphs are captured again in every call (timed below)
    for name, fn in (("ours", ours_run), ("transformers", hf_run)):
        with PeakMemory(device) as pm:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            t = time.perf_counter() - t0
        result[name] = {"seconds": t, "tokens_per_s": n_prompts * n * new_tokens / t, "peak_bytes": pm.peak}
    result["ours"].update(graphs_captured=stats.get("graphs"), capture_seconds=stats.get("capture_seconds"))
    result["speedup_vs_transformers"] = result["ours"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    return result


CHARS_PER_TOKEN = 3.0  # stated, not measured: Latin-script text ~4, Thai and Japanese fewer
TEMPLATE_TOKENS = 40  # chat template and role markers around the prompt
TRUNCATED = 0.2  # share of responses that reach max_response_tokens
# bf16; parameters a decode step reads whole: all but the input embedding (it gathers one row per token); untied
R1_15B = dict(layers=28, kv_heads=2, head_dim=128, parameters=1.777e9 - 151936 * 1536, bytes_per_value=2)
BANDWIDTHS = {"H100": 3.0e12, "H200": 4.3e12}  # measured copy bandwidths (shared/docs/performance.md)
MATMUL = 790e12  # bf16 FLOP/s measured on both (performance.md: 798 / 788)


def rollout_lengths(prompts=64, n=8, max_prompt=512, max_new=4096, seed=0):
    """(prompt lengths per row, response lengths per row, source of the prompt lengths)."""
    import random

    rng = random.Random(seed)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "rl",
                        "train.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            chars = [len(json.loads(line)["prompt"]) for line in f if line.strip()]
        lens = [min(max_prompt, round(c / CHARS_PER_TOKEN) + TEMPLATE_TOKENS) for c in rng.sample(chars, prompts)]
        source = f"shared RL prompts ({len(chars)}): characters / {CHARS_PER_TOKEN} + {TEMPLATE_TOKENS}"
    else:
        lens, source = [rng.randint(60, 400) for _ in range(prompts)], "uniform in [60, 400] (no ../shared/data)"
    plens = [p for p in lens for _ in range(n)]
    low = max(1, min(256, max_new // 16))
    resp = [max_new if rng.random() < TRUNCATED else rng.randrange(low, max_new) for _ in plens]
    return plens, resp, source


STEP_OVERHEAD = 20e-6  # seconds per decode step beyond its roofline time (a CUDA-graph replay and the host's turn)
H100 = dict(bandwidth=3.0e12, flops=790e12)  # measured copy bandwidth and bf16 matmul rate (performance.md)
# bytes per vocabulary entry per row of a decode step's logits and sampler, counted from the code (bf16 model, CUDA
# graphs, temperature > 0, top-p 1): the lm_head writes bf16 logits (2), `.float()` reads them and writes float32
# (2 + 4), the graph's static buffer copy (4 + 4): LOGIT_BYTES over the rows run; sample_next over the live rows:
# logits / T (4 + 4), log_softmax (4 + 4), exp (4 + 4), cumsum(dtype=float64) first casts (4 + 8), then sums (8 + 8)
LOGIT_BYTES = 2 + 2 + 4 + 4 + 4
SAMPLER_BYTES = 8 + 8 + 8 + 12 + 16
# the fused sampler (adamame/sampler.py): the lm_head writes bf16 logits (2), the kernel reads them once (2); per
# entry its compute is one exp, ~12 float32 operations (scale, max, subtract, sum, a scan, a compare and count, two
# selects with their reductions) and ~5 integer ones (indices, masks). A race over
# the vocabulary (Gumbel-max: argmax z / T - log(-log u)) reads the same but needs a hashed random number (~12
# integer operations) and two logs per entry. Rates of an H100 SXM from its published per-SM throughputs at
# 1.755 GHz (132 SMs; 16 transcendental, 128 float32 and 64 int32 operations per clock each), not measured:
FUSED_BYTES = 2 + 2
SFU, FP32, INT32 = 132 * 16 * 1.755e9, 132 * 128 * 1.755e9, 132 * 64 * 1.755e9
NOISE = {"blocks": dict(sfu=1, fp=12, int=5), "race": dict(sfu=3, fp=6, int=12)}
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def decode_costs(cfg) -> dict:
    """A model's decode costs in bf16: matmul parameters (the layers, the final norm and the lm_head: what a decode
    step reads, everything but the input embedding's gather), bytes of a KV slot (K and V of every layer), the
    attention FLOPs per slot read (QK and PV), one layer's temporaries per row (written and read once), the
    vocabulary."""
    import torch

    from adamame.memory import layer_transient_bytes
    from adamame.model import Transformer

    with torch.device("meta"):
        m = Transformer(cfg)
    embed = m.model.embed_tokens.weight.numel()
    matmul = sum(p.numel() for p in m.parameters()) - embed + (embed if cfg.tie_word_embeddings else 0)
    return dict(matmul=matmul, layers=cfg.num_hidden_layers, vocab=cfg.vocab_size,
                slot_bytes=2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2,
                attn_flops_per_slot=4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim,
                layer_bytes=2 * cfg.num_hidden_layers * layer_transient_bytes(cfg, torch.bfloat16))


def model_shape(name):
    """A paper model's decode costs, from its public config.json (tests/fixtures), and the memory plan's rollout rows
    on 8 GPUs of 80 GiB at the paper's settings."""
    from adamame.hf import read_config
    from adamame.memory import GiB, grpo_plan

    cfg = read_config(os.path.join(FIXTURES, name))
    plan = grpo_plan(cfg, world=8, total=80 * GiB, device="cuda", prompts_per_step=512, group_size=8,
                     max_prompt_tokens=512, max_response_tokens=4096, micro_batch_tokens=32768, lora_rank=32,
                     beta=0.001)
    return dict(name=name, rows=plan.rollout_rows, **decode_costs(cfg))


def sampler_seconds(entries, gpu=H100, noise="blocks") -> float:
    """The fused sampler over `entries` logits (rows x vocabulary): max of its read and of each unit's work."""
    n = NOISE[noise]
    return max(2 * entries / gpu["bandwidth"], n["sfu"] * entries / SFU, n["fp"] * entries / FP32,
               n["int"] * entries / INT32)


def step_time_model(m, sched, gpu=H100, sampler="torch") -> dict:
    """Seconds of one GPU's rollout by a roofline model over a replayed schedule (kv_reads(..., trace=True), one per
    generate call): each decode step costs max(bytes / bandwidth, FLOPs / peak) + STEP_OVERHEAD, with bytes = the
    weights, the KV each step reads, the layers' temporaries and the logits over the rows run, PyTorch's sampler's over
    the live rows; FLOPs = 2 x matmul parameters x rows run + attention over the slots read. With sampler="blocks"
    (the fused kernel) or "race" (a per-entry noise race) the step writes bf16 logits and the sampler kernel's time
    (sampler_seconds over the rows run) follows the step's. Compaction moves its kept rows' used slots (a gather into
    a temporary, then a copy: 4 passes); prefill runs at the peak FLOP rate."""
    t = {"decode": 0.0, "sampler": 0.0, "prefill": 0.0, "compaction": 0.0}
    bytes_ = {"weights": 0.0, "kv": 0.0, "layers": 0.0, "logits+sampler": 0.0, "compaction": 0.0}
    steps = 0
    for call in sched:
        for rows, slots, live, active, read in call["steps_trace"]:
            per_entry = rows * LOGIT_BYTES + live * SAMPLER_BYTES if sampler == "torch" else rows * 2
            b = (2 * m["matmul"], read * m["slot_bytes"], rows * m["layer_bytes"], m["vocab"] * per_entry)
            flops = 2 * m["matmul"] * rows + read * m["attn_flops_per_slot"]
            t["decode"] += max(sum(b) / gpu["bandwidth"], flops / gpu["flops"]) + STEP_OVERHEAD
            if sampler != "torch":
                t["sampler"] += sampler_seconds(rows * m["vocab"], gpu, sampler)
                bytes_["logits+sampler"] += 2 * rows * m["vocab"]
            for k, v in zip(("weights", "kv", "layers", "logits+sampler"), b):
                bytes_[k] += v
            steps += 1
        for e in call["events"]:
            if e[0] == "prefill":
                t["prefill"] += 2 * m["matmul"] * e[2] * e[3] / gpu["flops"]
            else:
                moved = 4 * e[1] * e[2] * m["slot_bytes"]
                bytes_["compaction"] += moved
                t["compaction"] += moved / gpu["bandwidth"]
    return {"seconds": sum(t.values()), "parts": t, "bytes": bytes_, "steps": steps}


def refill_case(ours, device, *, prompts, n, rows, max_new, max_prompt, bandwidth):
    """The refilled schedule measured: `prompts` x n samples in one generate call of `rows` KV-cache rows, prompt
    lengths and response lengths drawn as rollout_lengths draws them (up to max_prompt and max_new; forced through
    generate's response_lengths hook), against the step-time model's prediction for the same schedule at the
    measured copy bandwidth (on a GPU; bf16)."""
    import torch

    from adamame.generate import generate, kv_reads, make_decoder

    plens, resp, _ = rollout_lengths(prompts=prompts, n=n, max_prompt=max_prompt, max_new=max_new, seed=1)
    g = torch.Generator().manual_seed(0)
    V = ours.config.vocab_size
    ids = [torch.randint(0, V, (plens[i * n],), generator=g).tolist() for i in range(prompts)]
    kw = dict(max_new_tokens=max_new, n=n, temperature=1.0, seed=0, response_lengths=resp,
              decoder=make_decoder(ours, rows, max(plens), max_new))
    generate(ours, ids, **kw)  # warm-up: the same schedule captures its CUDA graphs, so the timed run replays them
    stats = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = generate(ours, ids, stats=stats, **kw)
    sync()
    seconds = time.perf_counter() - t0
    assert [len(s.tokens) for s in out] == resp
    sched = kv_reads(plens, resp, max_new, rows=rows, n=n, kernel=device == "cuda", trace=True)
    pred = step_time_model(decode_costs(ours.config), [sched], dict(bandwidth=bandwidth, flops=H100["flops"])) \
        if bandwidth else None
    return {"prompts": prompts, "n": n, "rows": rows, "max_new_tokens": max_new, "tokens": sum(resp),
            "decode_steps": stats["steps"], "replayed_steps": sched["steps"], "refilled": stats["refilled"],
            "measured_s": seconds, "predicted_s": pred and pred["seconds"],
            "measured_vs_predicted": pred and seconds / pred["seconds"]}


def sampler_case(rows, vocab, device, bandwidth, repeats=20) -> dict:
    """The fused sampler (adamame/sampler.py) against PyTorch's (sample_next on the float32 copy, as the decode step
    without it), on the same bf16 logits at temperature 0.8; the fused one's fraction of the bandwidth bound (one read
    of the bf16 logits at the copy bandwidth measured in this process). On CUDA each side is captured as a CUDA graph
    (as the decode step runs it) and timed over `repeats` replays with CUDA events, so launches do not count."""
    import torch

    from adamame.generate import keyed_uniforms, sample_next
    from adamame.sampler import sample, seed_tensor

    g = torch.Generator(device).manual_seed(0)
    z = (torch.randn(rows, vocab, generator=g, device=device) * 3).to(torch.bfloat16)
    ids, index, seed = torch.arange(rows, device=device), torch.zeros(rows, dtype=torch.long, device=device), 7
    inv_t, seed_t = torch.tensor([1 / 0.8], device=device), seed_tensor(seed, device)
    sides = {"fused": lambda: sample(z, inv_t, seed_t, ids, index, False),
             "torch": lambda: sample_next(z.float(), 0.8, uniforms=keyed_uniforms(seed, ids, index))}
    ms = {}
    for name, fn in sides.items():
        fn()
        if device == "cuda":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            ms[name] = start.elapsed_time(end) / repeats
            continue
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        ms[name] = 1e3 * (time.perf_counter() - t0) / repeats
    fused_lp = sample(z, inv_t, seed_t, ids, index, False)
    want = torch.log_softmax(z.float() / 0.8, -1).gather(1, fused_lp[0][:, None])[:, 0]
    return {"rows": rows, "vocab": vocab, "dtype": "bfloat16", "fused_ms": ms["fused"], "torch_ms": ms["torch"],
            "torch_vs_fused": ms["torch"] / ms["fused"], "max_abs_logp_diff": (fused_lp[1] - want).abs().max().item(),
            "frac_of_copy_bw": bandwidth and 2 * rows * vocab / (ms["fused"] / 1e3) / bandwidth}


def schedules(plens, resp, rows, n=8):
    """(today's: calls of `rows` rows rounded down to whole prompts, each run to its longest row; refilled: one call
    whose `rows` rows take waiting samples), each a list of traced kv_reads replays (the Triton decode kernel)."""
    from adamame.generate import kv_reads

    per = max(n, rows // n * n)
    before = [kv_reads(plens[a:a + per], resp[a:a + per], 4096, n=n, kernel=True, trace=True)
              for a in range(0, len(plens), per)]
    return before, [kv_reads(plens, resp, 4096, rows=rows, n=n, kernel=True, trace=True)]


def reads_report():
    """The --reads mode: the KV bytes of one paper-shape rollout three ways, then the step-time model of today's
    schedule and of the refilled one, for both paper models."""
    from adamame.generate import kv_reads, pow2_rows

    m = R1_15B
    slot_bytes = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * m["bytes_per_value"]
    weight_bytes = m["parameters"] * m["bytes_per_value"]
    plens, resp, source = rollout_lengths()
    print(f"paper shape, one GPU: {len(plens)} rows, prompts {min(plens)}-{max(plens)} tokens ({source}), responses "
          f"{min(resp)}-{max(resp)} ({TRUNCATED:.0%} reach 4,096); DeepSeek-R1-Distill-Qwen-1.5B bf16: "
          f"{slot_bytes:,} B per cache slot, {weight_bytes / 1e9:.2f} GB of weights per step (all but the input "
          f"embedding)")
    ways = (("before: SDPA, power-of-two rows", dict(kernel=False, rows_fn=pow2_rows)),
            ("SDPA, row buckets of 64 (ADAMAME_KERNELS=torch)", dict(kernel=False)),
            ("now: Triton decode kernel, row buckets of 64", dict(kernel=True)))
    out = {}
    for name, kw in ways:
        r = kv_reads(plens, resp, 4096, **kw)
        kv, useful, weights = r["read"] * slot_bytes, r["useful"] * slot_bytes, r["steps"] * weight_bytes
        times = {g: (kv + weights) / bw for g, bw in BANDWIDTHS.items()}
        bound = {g: (useful + weights) / bw for g, bw in BANDWIDTHS.items()}
        out[name] = {**r, "kv_bytes": kv, "useful_kv_bytes": useful, "weight_bytes": weights,
                     "useful_fraction": useful / kv, "seconds": times, "bound_seconds": bound}
        print(f"\n{name}:\n  {r['steps']} decode steps, {r['graphs']} (rows, slots) buckets = CUDA graphs; rows run "
              f"{r['rows_run']:,}, live {r['rows_active']:,} ({r['rows_active'] / r['rows_run']:.0%}; matmuls "
              f"{2 * m['parameters'] * r['rows_run'] / MATMUL:.1f} s at {MATMUL / 1e12:.0f} TFLOP/s)\n"
              f"  KV read {kv / 1e12:.1f} TB, of it a live row's own slots {useful / 1e12:.1f} TB: useful fraction "
              f"{useful / kv:.3f}; weights {weights / 1e12:.1f} TB (one read per step, all of it needed)\n"
              f"  {(kv + weights) / r['tokens'] / 1e6:.1f} MB per generated token; predicted "
              + ", ".join(f"{g} {times[g]:.0f} s (bound {bound[g]:.0f} s, {bound[g] / times[g]:.0%})" for g in times))
    print(f"\nuseful KV fraction {out[ways[-1][0]]['useful_fraction']:.3f}")

    print(f"\nstep-time model (H100: {H100['bandwidth'] / 1e12:.1f} TB/s, {H100['flops'] / 1e12:.0f} TFLOP/s, "
          f"{STEP_OVERHEAD * 1e6:.0f} us per step), one GPU's rollout of {len(plens)} samples; logits and sampler "
          f"bytes per vocabulary entry per row: PyTorch's sampler {LOGIT_BYTES + SAMPLER_BYTES}, the fused one "
          f"{FUSED_BYTES}")
    e = 512 * 151936
    print(f"  the fused sampler at 512 rows x 151,936: blocks (one exp per entry) {sampler_seconds(e) * 1e6:.0f} us, a "
          f"Gumbel race (noise and two logs per entry) {sampler_seconds(e, noise='race') * 1e6:.0f} us, the read "
          f"alone {2 * e / H100['bandwidth'] * 1e6:.0f} us: blocks")
    final = {}
    for name in ("deepseek-r1-distill-qwen-1.5b", "qwen3-4b"):
        shape = model_shape(name)
        before, after = schedules(plens, resp, shape["rows"])
        res = {"before": step_time_model(shape, before), "refilled": step_time_model(shape, after),
               "after": step_time_model(shape, after, sampler="blocks"),
               "race": step_time_model(shape, after, sampler="race"), "rows": shape["rows"]}
        out[f"model {name}"] = res
        final[name] = res
        calls = f"{len(before)} call(s) of up to {max(max(s[0] for s in c['steps_trace']) for c in before)} rows"
        for when, how in (("before", f"{calls}, PyTorch's sampler"),
                          ("refilled", f"one call, {shape['rows']} rows refilled, PyTorch's sampler"),
                          ("race", f"one call, {shape['rows']} rows refilled, a fused race sampler"),
                          ("after", f"one call, {shape['rows']} rows refilled, the fused sampler")):
            r = res[when]
            tb = {k: v / 1e12 for k, v in r["bytes"].items()}
            print(f"  {name} {when} ({how}): {r['seconds']:.1f} s, {r['steps']:,} decode steps; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in r["parts"].items()) + "; TB moved: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in tb.items()))
    print("predicted rollout per GPU (H100 model): " + ", ".join(
        f"{n.replace('deepseek-', '')} {r['after']['seconds']:.1f} s (before: {r['before']['seconds']:.1f} s)"
        for n, r in final.items()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: a tiny model, 4 prompts x 2 x 8 tokens")
    ap.add_argument("--gpu", action="store_true", help="CUDA mode: Qwen2.5-1.5B shapes in bf16")
    ap.add_argument("--reads", action="store_true", help="no model: the bytes a paper-shape rollout reads (above)")
    ap.add_argument("--json", help="write the results here (rewritten after every case)")
    args = ap.parse_args(argv)
    if args.reads:
        return reads_report()
    import torch

    torch.set_grad_enabled(False)
    result = {"torch": torch.__version__, "cases": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    if args.gpu:
        dev, dtype = "cuda", torch.bfloat16
        hf, ours = build(QWEN25_15B, dev, dtype)
        bw = copy_bandwidth()
        result.update(device=torch.cuda.get_device_name(), copy_bandwidth=bw, dtype="bfloat16",
                      parameters=sum(p.numel() for p in ours.parameters()))
        result["host_ms_per_step"] = {"graphs_1_row": host_ms_per_step(ours, 1, 16, True),
                                      "eager_1_row": host_ms_per_step(ours, 1, 16, False)}
        save()
        plens, resp, _ = rollout_lengths()  # decode attention at the paper's shape: mid-rollout and its tail
        mid = [p + 2048 if r > 2048 else 0 for p, r in zip(plens, resp)]
        result["attention"] = [attention_case(512, 2, 6, 128, 4608, mid, dev, dtype),
                               attention_case(8, 2, 6, 128, 4608, [4400] * 8, dev, dtype)]
        for a in result["attention"]:
            a["frac_of_copy_bw"] = a["useful_bytes"] / (a["ours_ms"] / 1e3) / bw
        save()
        result["sampler"] = sampler_case(512, 151936, dev, bw)
        save()
        # the refilled schedule at a reduced paper-like shape (the step's time limit): 16 prompts x 8 in 64 rows, up
        # to 512 new tokens
        result["refill"] = refill_case(ours, dev, prompts=16, n=8, rows=64, max_new=512, max_prompt=256, bandwidth=bw)
        save()
        for P, ctx, new in ((1, 16, 256), (512, 256, 1024)):
            c = run_case(hf, ours, dev, P, 1, ctx, new, fixed_len=True, hf_static=True)
            c["bound_tokens_per_s"] = bound_tokens_per_s(ours, P, ctx, new, bw)
            c["frac_of_bound"] = c["ours"]["tokens_per_s"] / c["bound_tokens_per_s"]
            result["cases"].append(c)
            save()
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        shape, (P, n, ctx, new) = (TINY_MODEL, (4, 2, 16, 8)) if args.tiny else (CPU_MODEL, (32, 8, 64, 128))
        hf, ours = build(shape, "cpu", torch.float32)
        result.update(device=platform.processor() or platform.machine(), dtype="float32",
                      parameters=sum(p.numel() for p in ours.parameters()))
        result["cases"].append(run_case(hf, ours, "cpu", P, n, ctx, new))
        result["refill"] = refill_case(ours, "cpu", prompts=3, n=2, rows=4, max_new=8 if args.tiny else 64,
                                       max_prompt=16, bandwidth=None)
        if args.tiny and os.environ.get("TRITON_INTERPRET") == "1":  # the kernels under the interpreter: a smoke test
            result["sampler"] = sampler_case(4, 3000, "cpu", None, repeats=1)
            result["attention"] = [attention_case(3, 2, 2, 32, 300, [100, 0, 250], "cpu", torch.float32, repeats=2)]
        save()
    print(f"device: {result['device']}  torch {torch.__version__}  model: qwen2, {result['parameters'] / 1e6:.1f}M "
          f"parameters, {result['dtype']}")
    if "host_ms_per_step" in result:
        h = result["host_ms_per_step"]
        print(f"host time per decode step (batch 1): CUDA graphs {h['graphs_1_row']:.3f} ms, eager "
              f"{h['eager_1_row']:.3f} ms; copy bandwidth {result['copy_bandwidth'] / 1e12:.2f} TB/s")
    for a in result.get("attention", []):
        frac = f", {100 * a['frac_of_copy_bw']:.0f}% of copy bandwidth" if "frac_of_copy_bw" in a else ""
        print(f"decode attention {a['rows']} rows x {a['slots']} slots ({a['n_kv']} kv x {a['rep']} heads, "
              f"{a['dtype']}, {a['splits']} split(s)): Triton {a['ours_ms']:.3f} ms{frac}, SDPA {a['sdpa_ms']:.3f} ms: "
              f"SDPA / ours = {a['sdpa_vs_ours']:.2f}x, max |diff| {a['max_abs_diff']:.1e}")
    sm = result.get("sampler")
    if sm:
        frac = f", {100 * sm['frac_of_copy_bw']:.0f}% of copy bandwidth" if sm["frac_of_copy_bw"] else ""
        print(f"sampler {sm['rows']} rows x {sm['vocab']:,} {sm['dtype']}: fused {sm['fused_ms']:.3f} ms{frac}, "
              f"PyTorch {sm['torch_ms']:.3f} ms: PyTorch / fused = {sm['torch_vs_fused']:.2f}x, max |logp diff| "
              f"{sm['max_abs_logp_diff']:.1e}")
    r = result.get("refill")
    if r:
        pred = f", predicted {r['predicted_s']:.2f} s (measured / predicted {r['measured_vs_predicted']:.2f})" \
            if r["predicted_s"] else ""
        print(f"refilled rollout: {r['prompts']} prompts x {r['n']} samples in {r['rows']} rows, {r['tokens']:,} "
              f"tokens (lengths forced, up to {r['max_new_tokens']}): {r['decode_steps']} decode steps (replayed "
              f"{r['replayed_steps']}), {r['measured_s']:.2f} s{pred}")
    for c in result["cases"]:
        o, h = c["ours"], c["transformers"]
        mem = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"  # noqa: E731
        extra = f"  {100 * c['frac_of_bound']:.0f}% of the bandwidth bound" if c.get("frac_of_bound") else ""
        cap = f", {o['graphs_captured']} graphs captured in {o['capture_seconds']:.2f} s" if o.get("graphs_captured") \
            else ""
        print(f"{c['prompts']} prompts x {c['n']} samples x {c['new_tokens']} new tokens, prompts <= {c['context']}: "
              f"ours {o['tokens_per_s']:.0f} tok/s ({mem(o['peak_bytes'])}{cap}), transformers "
              f"{h['tokens_per_s']:.0f} tok/s ({mem(h['peak_bytes'])}), ours/transformers = "
              f"{c['speedup_vs_transformers']:.2f}x{extra}")
    return result


if __name__ == "__main__":
    main()
