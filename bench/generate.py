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
                                             #       paged rollout against the step-time model
    python bench/generate.py --reads         # no model: the bytes a paper-shape rollout's decode steps read, and
                                             #       the step-time model of one GPU's rollout

--reads replays the engine's schedule (bench/schedule.py: admissions, preemptions, buckets, which rows read what) for one
GPU's rollout at the paper's shape (DeepSeek-R1-Distill-Qwen-1.5B in bf16, 64 prompts x 8 samples = 512 rows, up to
512 prompt and 4,096 response tokens). Prompt lengths: the shared RL prompts' characters / CHARS_PER_TOKEN plus
TEMPLATE_TOKENS (../shared/data/rl/train.jsonl; without it, uniform in [60, 400]); response lengths: a share
TRUNCATED hits 4,096, the others uniform in [256, 4,096). It prints, for the engine before the decode kernel (SDPA,
power-of-two row buckets), SDPA with today's row buckets (ADAMAME_KERNELS=torch) and the engine as it now runs on CUDA
(the Triton decode kernel; what it loads is each active row's range, as its counting build shows in
tests/test_decode_attention.py): KV bytes read, the bytes that belong to a live row's own valid slots, their ratio, the
weight bytes, bytes per generated token, and the predicted decode time at H100 3.0 TB/s and H200 4.3 TB/s against
the bound (useful KV + one weight read per step).

It then models one GPU's rollout step by step (`step_time_model`) for both paper models at that shape, in one
generate call whose paged KV cache is the memory plan's on 8 x 80 GiB, kernel by kernel: the decode step's kernels as
bench/kernel_count.py records them (every aten op but views and empties, every Triton launch, with the bytes of its
tensors and a GEMM's FLOPs; the attention kernel adds the KV slots each row reads), each priced at
max(bytes / 3.0e12, FLOPs / 790e12, KERNEL_FLOOR) (an H100's measured copy bandwidth and bf16 matmul rate; the floor,
2 us, is an assumption), the sampler kernel at least its compute (`sampler_seconds`); the static cache's compaction
copies at the bandwidth; prefill at the peak FLOP rate. "static" is the same decode step over the static cache the
engine had before paging (commit 6a718db: a row per sample in flight, finished rows refilled, compaction) with the
same KV memory (bench/schedule.py's static_schedule); "before" is the decode step of commit b2bc083 (unfused layers,
7 GEMMs a layer) over that static schedule, recorded by `kernel_count.py --record` into
bench/fixtures/decode_step_b2bc083.json and priced by the same model. Per model it prints the paged schedule (rows in
flight, steps, preemptions, recomputed tokens, prefills) and a sweep of the admission reserve. Its last three lines:
`predicted rollout per GPU (H100 model, 2 us a kernel): ...`, `kernels per decode step: ...` and `paged vs static
cache (H100 model): ...`. --gpu measures a paged rollout (16 prompts x 8 in the KV memory of 64 rows, response lengths
forced to the workload's distribution up to 512 tokens) against the same model's prediction
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
    """A random transformers Qwen2 model and ours with the same weights, ours in the rollout copy's layout (q/k/v and
    gate/up merged)."""
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
    return hf, ours.eval().merge_projections()


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
    from adamame.model import PagedKVCache

    cfg = ours.config
    dev = next(ours.parameters()).device
    cache = PagedKVCache.static(cfg, rows, prompt_len + steps + 2, next(ours.parameters()).dtype, dev)
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
    W = -(-slots // 32)  # ours reads the same keys and values as a paged cache: each row its own blocks
    pad = torch.zeros(rows, n_kv, W * 32 - slots, head_dim, dtype=dtype, device=device)
    kp, vp = (torch.cat([t, pad], 2).transpose(1, 2).reshape(rows * W * 32, n_kv, head_dim) for t in (k, v))
    table = torch.arange(rows * W, dtype=torch.int32, device=device).view(rows, W)
    runs = {"ours": lambda: decode_attention(q, kp, vp, table, start, end, head_dim ** -0.5),
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


KERNEL_FLOOR = 2e-6  # seconds: the least a kernel costs inside a CUDA graph. An assumption (1-3 us is what an H100
#                      is said to take per graphed kernel) until the GPU check's floor case measures it
H100 = dict(bandwidth=3.0e12, flops=790e12)  # measured copy bandwidth and bf16 matmul rate (performance.md)
# the fused sampler (adamame/sampler.py) reads the bf16 logits once; per entry its compute is one exp, ~12 float32
# operations (scale, max, subtract, sum, a scan, a compare and count, two selects with their reductions) and ~5
# integer ones (indices, masks). Rates of an H100 SXM from its published per-SM throughputs at 1.755 GHz (132 SMs;
# 16 transcendental, 128 float32 and 64 int32 operations per clock each), not measured:
SFU, FP32, INT32 = 132 * 16 * 1.755e9, 132 * 128 * 1.755e9, 132 * 64 * 1.755e9
ATTN, SAMPLER = "adamame.decode_attention", "adamame.sample"
BEFORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "decode_step_b2bc083.json")
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def decode_costs(cfg) -> dict:
    """A model's decode costs in bf16: bytes of a KV slot (K and V of every layer), the attention FLOPs per slot read
    (QK and PV), layers, kv heads, vocabulary, and the matmul parameters (what prefill multiplies by)."""
    import torch

    from adamame.model import Transformer

    with torch.device("meta"):
        m = Transformer(cfg)
    embed = m.model.embed_tokens.weight.numel()
    matmul = sum(p.numel() for p in m.parameters()) - embed + (embed if cfg.tie_word_embeddings else 0)
    return dict(matmul=matmul, layers=cfg.num_hidden_layers, vocab=cfg.vocab_size, kv_heads=cfg.num_key_value_heads,
                hidden=cfg.hidden_size,
                slot_bytes=2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2,
                attn_flops_per_slot=4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim)


def engine_kernels(cfg=None, recorded=None, cascade=True) -> dict:
    """A decode step as kernels to price (bench/kernel_count.py): per regime ("unsplit", "split"), the ops of the
    one-layer step ("one") and of one more layer ("layer"), each (name, kernels, bytes = a + b R, FLOPs = c + d R) for
    R rows run. Recorded now on the meta device from this code for config `cfg`, or taken from a recording (one
    model's entry of kernel_count.record's JSON: the "before" fixture). cascade=False: the step without the shared
    prompts' attention pass (the static cache had none)."""
    import kernel_count as kc

    if recorded is None:
        recorded = {regime: {str(r): kc.per_layer(cfg, r, slots, cascade=cascade) for r in rows}
                    for regime, (rows, slots) in kc.REGIMES.items()}
    out = {}
    for regime, (rows, _) in kc.REGIMES.items():
        r1, r2 = rows
        out[regime] = {}
        for part, key in (("one", "outside"), ("layer", "layer")):
            ops1, ops2 = recorded[regime][str(r1)][key], recorded[regime][str(r2)][key]
            assert [o[0] for o in ops1] == [o[0] for o in ops2], "the recordings' ops differ"
            out[regime][part] = [(n, k, b1 - (b2 - b1) / (r2 - r1) * r1, (b2 - b1) / (r2 - r1),
                                  f1 - (f2 - f1) / (r2 - r1) * r1, (f2 - f1) / (r2 - r1))
                                 for (n, k, b1, f1), (_, _, b2, f2) in zip(ops1, ops2)]
    return out


def sampler_seconds(entries, gpu=H100) -> float:
    """The fused sampler over `entries` logits (rows x vocabulary): max of its read and of each unit's work."""
    return max(2 * entries / gpu["bandwidth"], entries / SFU, 12 * entries / FP32, 5 * entries / INT32)


def step_ops(eng, m, rows, slots) -> list:
    """(ops of the one-layer step, ops of each further layer) of a step of `rows` rows over `slots` slots: the
    unsplit recording's, with the attention's and the sampler's ops from the split one where they split."""
    from adamame.decode_attention import num_splits as attn_splits
    from adamame.sampler import num_splits as sampler_splits

    a = "split" if attn_splits(rows, m["kv_heads"], slots) > 1 else "unsplit"
    s = "split" if sampler_splits(rows, m["vocab"]) > 1 else "unsplit"

    def part(p):
        return ([o for o in eng["unsplit"][p] if not o[0].startswith((ATTN, SAMPLER))]
                + [o for o in eng[a][p] if o[0].startswith(ATTN)] + [o for o in eng[s][p] if o[0].startswith(SAMPLER)])
    return part("one"), part("layer")


def kernels_per_step(eng, m, rows, slots) -> int:
    one, layer = step_ops(eng, m, rows, slots)
    return sum(o[1] for o in one) + (m["layers"] - 1) * sum(o[1] for o in layer)


def step_seconds(eng, m, rows, slots, read, gpu=H100, floor=KERNEL_FLOOR) -> float:
    """One decode step, kernel by kernel: each at max(bytes / bandwidth, FLOPs / peak, floor), a second launch of an op
    (a split's combine or merge) at the floor; the attention kernel's bytes and FLOPs add the KV slots the step reads
    (`read` row-slots, a layer's share each), the sampler kernel is at least sampler_seconds."""
    fixed, attention = step_parts(eng, m, rows, slots, gpu, floor)
    return fixed + attention(read)


def step_parts(eng, m, rows, slots, gpu=H100, floor=KERNEL_FLOOR) -> tuple:
    """(seconds of every kernel but the attention kernels, the attention kernels' seconds as a function of the
    row-slots the step reads), for step_seconds."""
    one, layer = step_ops(eng, m, rows, slots)
    fixed, attn = 0.0, []
    for ops, times in ((one, 1), (layer, m["layers"] - 1)):
        for name, k, b0, b1, f0, f1 in ops:
            b, f = b0 + b1 * rows, f0 + f1 * rows
            if name == "aten.embedding":  # a gather of the rows' embeddings (b2bc083's recording counted the table)
                b = 2 * rows * m["hidden"] * 2
            if name == ATTN:
                attn.append((times, b, f))
                fixed += times * (k - 1) * floor
                continue
            sec = max(b / gpu["bandwidth"], f / gpu["flops"], floor)
            if name == SAMPLER:
                sec = max(sec, sampler_seconds(rows * m["vocab"], gpu))
            fixed += times * (sec + (k - 1) * floor)

    def attention(read):
        b, f = read * m["slot_bytes"] / m["layers"], read * m["attn_flops_per_slot"] / m["layers"]
        return sum(times * max((b0 + b) / gpu["bandwidth"], (f0 + f) / gpu["flops"], floor) for times, b0, f0 in attn)
    return fixed, attention


def model_shape(name):
    """A paper model's decode costs, from its public config.json (tests/fixtures), and the memory plan's rollout rows
    on 8 GPUs of 80 GiB at the paper's settings."""
    from adamame.hf import read_config
    from adamame.memory import GiB, grpo_plan

    cfg = read_config(os.path.join(FIXTURES, name))
    plan = grpo_plan(cfg, world=8, total=80 * GiB, device="cuda", prompts_per_step=512, group_size=8,
                     max_prompt_tokens=512, max_response_tokens=4096, micro_batch_tokens=32768, lora_rank=32,
                     beta=0.001)
    return dict(name=name, rows=plan.rollout_rows, cfg=cfg, **decode_costs(cfg))


def step_time_model(m, sched, eng, gpu=H100, floor=KERNEL_FLOOR) -> dict:
    """Seconds of one GPU's rollout over a replayed schedule (bench/schedule.py, trace=True, one per generate call): each
    decode step priced kernel by kernel (step_seconds, for the engine `eng`: engine_kernels), prefill at the peak FLOP
    rate, compaction's copies of its kept rows' used slots (a gather into a temporary, then a copy: 4 passes) at the
    bandwidth."""
    t = {"decode": 0.0, "prefill": 0.0, "compaction": 0.0}
    steps, parts = 0, {}
    for call in sched:
        for rows, slots, _live, _active, read in call["steps_trace"]:
            if (rows, slots) not in parts:
                parts[rows, slots] = step_parts(eng, m, rows, slots, gpu, floor)
            fixed, attention = parts[rows, slots]
            t["decode"] += fixed + attention(read)
            steps += 1
        for e in call["events"]:
            if e[0] == "prefill":
                t["prefill"] += 2 * m["matmul"] * e[2] * e[3] / gpu["flops"]
            else:
                t["compaction"] += 4 * e[1] * e[2] * m["slot_bytes"] / gpu["bandwidth"]
    return {"seconds": sum(t.values()), "parts": t, "steps": steps}


def refill_case(ours, device, *, prompts, n, rows, max_new, max_prompt, bandwidth):
    """The paged schedule measured: `prompts` x n samples in one generate call with the KV memory of `rows` rows, prompt
    lengths and response lengths drawn as rollout_lengths draws them (up to max_prompt and max_new; forced through
    generate's response_lengths hook), against the step-time model's prediction for the same schedule at the
    measured copy bandwidth (on a GPU; bf16)."""
    import torch

    from adamame.generate import cache_slots, generate, make_decoder
    from bench.schedule import paged_schedule

    plens, resp, _ = rollout_lengths(prompts=prompts, n=n, max_prompt=max_prompt, max_new=max_new, seed=1)
    g = torch.Generator().manual_seed(0)
    V = ours.config.vocab_size
    ids = [torch.randint(0, V, (plens[i * n],), generator=g).tolist() for i in range(prompts)]
    kw = dict(max_new_tokens=max_new, n=n, temperature=1.0, seed=0, response_lengths=resp,
              decoder=make_decoder(ours, len(plens), max(plens), max_new,
                                   blocks=rows * cache_slots(max(plens), max_new) // 32 + 1))
    generate(ours, ids, **kw)  # warm-up: the same schedule captures its CUDA graphs, so the timed run replays them
    stats = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = generate(ours, ids, stats=stats, **kw)
    sync()
    seconds = time.perf_counter() - t0
    assert [len(s.tokens) for s in out] == resp
    rep = ours.config.num_attention_heads // ours.config.num_key_value_heads
    sched = paged_schedule(plens, resp, max_new, rows=rows, n=n, kernel=device == "cuda", forced=True, rep=rep,
                           trace=True)
    pred = step_time_model(decode_costs(ours.config), [sched], engine_kernels(ours.config),
                           dict(bandwidth=bandwidth, flops=H100["flops"])) if bandwidth else None
    return {"prompts": prompts, "n": n, "rows": rows, "max_new_tokens": max_new, "tokens": sum(resp),
            "decode_steps": stats["steps"], "replayed_steps": sched["steps"], "most_rows": stats["most_rows"],
            "measured_s": seconds, "predicted_s": pred and pred["seconds"],
            "measured_vs_predicted": pred and seconds / pred["seconds"]}


def graph_ms(fn, repeats: int) -> float:
    """Milliseconds per replay of `fn` captured as one CUDA graph (after a warm-up run), timed with CUDA events."""
    import torch

    fn()
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
    return start.elapsed_time(end) / repeats


def floor_case(kernels=300, repeats=50) -> dict:
    """The least a kernel costs inside a CUDA graph (KERNEL_FLOOR's measurement): a graph of `kernels` in-place adds
    on one float each, replayed; microseconds per kernel."""
    import torch

    x = torch.zeros(kernels, device="cuda")
    ms = graph_ms(lambda: [x[i:i + 1].add_(1) for i in range(kernels)], repeats)
    return {"kernels": kernels, "us_per_kernel": ms * 1e3 / kernels,
            "model_us": KERNEL_FLOOR * 1e6}


def batch1_prediction(ours, ctx, new, bandwidth) -> dict:
    """The step-time model's batch-1 decode of `ours` (prompt ctx, new tokens) as a fraction of the weight-read bound
    (every step reads the weights once and the KV cache so far), at the bandwidth measured in this process."""
    m, eng = decode_costs(ours.config), engine_kernels(ours.config)
    gpu = dict(bandwidth=bandwidth, flops=H100["flops"])
    weights = sum(p.numel() for p in ours.parameters()) * 2
    slots = -(-(ctx + new) // 16) * 16
    model = sum(step_seconds(eng, m, 1, min(-(-(ctx + t + 1) // 256) * 256, slots), ctx + t + 1, gpu)
                for t in range(new))
    bound = sum(weights + (ctx + t + 1) * m["slot_bytes"] for t in range(new)) / bandwidth
    return {"predicted_s": model, "bound_s": bound, "predicted_frac_of_bound": bound / model,
            "kernels_per_step": kernels_per_step(eng, m, 1, slots)}


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
        if device == "cuda":
            ms[name] = graph_ms(fn, repeats)
            continue
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        ms[name] = 1e3 * (time.perf_counter() - t0) / repeats
    fused_lp = sample(z, inv_t, seed_t, ids, index, False)
    want = torch.log_softmax(z.float() / 0.8, -1).gather(1, fused_lp[0][:, None])[:, 0]
    return {"rows": rows, "vocab": vocab, "dtype": "bfloat16", "fused_ms": ms["fused"], "torch_ms": ms["torch"],
            "torch_vs_fused": ms["torch"] / ms["fused"], "max_abs_logp_diff": (fused_lp[1] - want).abs().max().item(),
            "frac_of_copy_bw": bandwidth and 2 * rows * vocab / (ms["fused"] / 1e3) / bandwidth}


def reads_report():
    """The --reads mode: the KV bytes of one paper-shape rollout three ways, then the step-time model of its decode
    steps before and after the fused layer kernels, for both paper models."""
    from adamame.generate import pow2_rows
    from adamame.memory import cache_blocks
    from bench.schedule import paged_schedule, static_schedule

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
        r = paged_schedule(plens, resp, 4096, n=8, **kw)
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
          f"{KERNEL_FLOOR * 1e6:.0f} us at least a kernel), one GPU's rollout of {len(plens)} samples in one generate "
          f"call with the memory plan's KV cache, with the fused sampler; before: the decode step of commit b2bc083 "
          f"(bench/fixtures), priced by the same model")
    with open(BEFORE) as f:
        recorded = json.load(f)
    final = {}
    for name in ("deepseek-r1-distill-qwen-1.5b", "qwen3-4b"):
        shape = model_shape(name)
        static = [static_schedule(plens, resp, 4096, rows=shape["rows"], n=8, kernel=True, trace=True)]
        blocks = cache_blocks(shape["rows"], 512, 4096)  # the plan's cache (prompts up to 512 tokens)
        rep = shape["cfg"].num_attention_heads // shape["cfg"].num_key_value_heads
        paged = [paged_schedule(plens, resp, 4096, blocks=blocks, n=8, rep=rep, trace=True)]
        engines = {"before": engine_kernels(recorded=recorded[name]), "after": engine_kernels(shape["cfg"]),
                   "static": engine_kernels(shape["cfg"], cascade=False)}
        res = {"rows": shape["rows"]}
        for when, eng, sched in (("before", engines["before"], static), ("static", engines["static"], static),
                                 ("paged", engines["after"], paged)):
            r = step_time_model(shape, sched, eng)
            r["kernels"] = kernels_per_step(eng, shape, shape["rows"], 4608)
            r["kernels_tail"] = kernels_per_step(eng, shape, 1, 4608)
            res[when] = r
            print(f"  {name} {when}: {r['seconds']:.1f} s, {r['steps']:,} decode steps of {r['kernels']:,} kernels "
                  f"({shape['rows']} rows; {r['kernels_tail']:,} at 1 row, split), "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in r["parts"].items()))
        sp = paged[0]
        res["schedule"] = {k: sp[k] for k in ("steps", "rows_in_flight", "most_rows", "preemptions", "recomputed",
                                              "prefills", "prefill_tokens", "blocks")}
        res["static_schedule"] = {"steps": static[0]["steps"], "rows": shape["rows"],
                                  "prefill_tokens": sum(e[2] * e[3] for e in static[0]["events"] if e[0] == "prefill")}
        print(f"  {name} paged schedule: {sp['blocks']:,} blocks (the KV memory of {shape['rows']} static rows), "
              f"{sp['rows_in_flight']:.0f} rows in flight on average (most {sp['most_rows']}), {sp['steps']:,} steps "
              f"(static: {static[0]['steps']:,}), {sp['preemptions']} preemptions, {sp['recomputed']:,} tokens "
              f"recomputed, {sp['prefills']} prompts prefilled ({sp['prefill_tokens']:,} tokens; static: "
              f"{res['static_schedule']['prefill_tokens']:,} padded)")
        res["reserve"] = {}
        for reserve in (1024, 1536, 2048, 2560, 3072):
            sw = paged_schedule(plens, resp, 4096, blocks=blocks, n=8, reserve=reserve, rep=rep, trace=True)
            r = step_time_model(shape, [sw], engines["after"])
            res["reserve"][reserve] = dict(seconds=r["seconds"], steps=sw["steps"], rows=sw["rows_in_flight"],
                                           preemptions=sw["preemptions"], recomputed=sw["recomputed"])
        print(f"  {name} reserve sweep (tokens: seconds, steps, rows in flight, preemptions, recomputed tokens): "
              + "; ".join(f"{k}: {v['seconds']:.1f} s, {v['steps']:,}, {v['rows']:.0f}, {v['preemptions']}, "
                          f"{v['recomputed']:,}" for k, v in res["reserve"].items()))
        out[f"model {name}"] = final[name] = res
    short = {n: n.replace("deepseek-", "") for n in final}
    print(f"predicted rollout per GPU (H100 model, {KERNEL_FLOOR * 1e6:.0f} us a kernel): " + ", ".join(
        f"{short[n]} {r['paged']['seconds']:.1f} s (before: {r['before']['seconds']:.1f} s)" for n, r in final.items()))
    print("kernels per decode step: " + ", ".join(
        f"{short[n]} {r['paged']['kernels']} (before: {r['before']['kernels']})" for n, r in final.items()))
    print("paged vs static cache (H100 model): " + ", ".join(
        f"{short[n]} {r['paged']['seconds']:.1f} s vs {r['static']['seconds']:.1f} s" for n, r in final.items()))
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
        result["floor"] = floor_case()
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
        # the paged schedule at a reduced paper-like shape (the step's time limit): 16 prompts x 8 in 64 rows, up
        # to 512 new tokens
        result["refill"] = refill_case(ours, dev, prompts=16, n=8, rows=64, max_new=512, max_prompt=256, bandwidth=bw)
        save()
        for P, ctx, new in ((1, 16, 256), (512, 256, 1024)):
            c = run_case(hf, ours, dev, P, 1, ctx, new, fixed_len=True, hf_static=True)
            c["bound_tokens_per_s"] = bound_tokens_per_s(ours, P, ctx, new, bw)
            c["frac_of_bound"] = c["ours"]["tokens_per_s"] / c["bound_tokens_per_s"]
            if P == 1:
                c["model"] = batch1_prediction(ours, ctx, new, bw)
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
    if "floor" in result:
        f = result["floor"]
        print(f"kernel floor: a CUDA graph of {f['kernels']} tiny kernels, {f['us_per_kernel']:.2f} us a kernel "
              f"(the step-time model assumes {f['model_us']:.0f} us)")
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
        print(f"paged rollout: {r['prompts']} prompts x {r['n']} samples in the memory of {r['rows']} rows, {r['tokens']:,} "
              f"tokens (lengths forced, up to {r['max_new_tokens']}): {r['decode_steps']} decode steps (replayed "
              f"{r['replayed_steps']}), {r['measured_s']:.2f} s{pred}")
    for c in result["cases"]:
        o, h = c["ours"], c["transformers"]
        mem = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"  # noqa: E731
        extra = f"  {100 * c['frac_of_bound']:.0f}% of the bandwidth bound" if c.get("frac_of_bound") else ""
        if c.get("model"):
            extra += (f" (the step-time model: {100 * c['model']['predicted_frac_of_bound']:.0f}%, "
                      f"{c['model']['kernels_per_step']} kernels a step)")
        cap = f", {o['graphs_captured']} graphs captured in {o['capture_seconds']:.2f} s" if o.get("graphs_captured") \
            else ""
        print(f"{c['prompts']} prompts x {c['n']} samples x {c['new_tokens']} new tokens, prompts <= {c['context']}: "
              f"ours {o['tokens_per_s']:.0f} tok/s ({mem(o['peak_bytes'])}{cap}), transformers "
              f"{h['tokens_per_s']:.0f} tok/s ({mem(h['peak_bytes'])}), ours/transformers = "
              f"{c['speedup_vs_transformers']:.2f}x{extra}")
    return result


if __name__ == "__main__":
    main()
