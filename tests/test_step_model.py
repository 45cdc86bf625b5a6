"""bench/generate.py's step-time model of a rollout, on a schedule small enough to price by hand, and the --reads
report's last three lines as the issue tracker and the closing notes read them."""

import os
import re
import subprocess
import sys

import pytest

from bench import generate as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_step_time_model_prices_a_schedule_kernel_by_kernel_as_computed_by_hand():
    m = dict(matmul=1e9, layers=3, kv_heads=2, vocab=20000, slot_bytes=3000, attn_flops_per_slot=30, hidden=25)
    # an engine of 3 layers: outside, an embedding (priced as the gather of R rows of 25 bf16 values, written: 100 R
    # bytes, whatever was recorded) and the sampler (bytes 2 x vocab x R); a
    # layer, a GEMM (1e6 bytes, 1e9 FLOPs a row) and the attention (64 bytes a row); split, both take two launches
    # and the split sampler runs a PyTorch op (8 bytes a row) before its kernel
    layer = [("aten.mm", 1, 1e6, 0, 0, 1e9), ("adamame.decode_attention", 1, 0, 64, 0, 0)]
    one = [("aten.embedding", 1, 100, 10, 0, 0), *layer, ("adamame.sample", 1, 0, 40000, 0, 0)]
    split = lambda ops: [(n, 2 if n.startswith("adamame.") else k, *r) for n, k, *r in ops]  # noqa: E731
    eng = {"unsplit": {"one": one, "layer": layer},
           "split": {"one": split(one[:-1]) + [("adamame.sample>aten.sub", 1, 0, 8, 0, 0), split(one)[-1]],
                     "layer": split(layer)}}
    # two steps: 4 rows over 256 slots reading 500 row-slots (attention unsplit: 256 slots; the sampler splits: 4
    # rows of 20,000), 512 rows over 4,608 reading 90,000 (neither splits); one admission prefilling 2 prompts
    # padded to 100 tokens; one compaction keeping 2 rows of 300 slots
    sched = [{"steps_trace": [(4, 256, 3, 2, 500), (512, 4608, 512, 512, 90000)],
              "events": [("prefill", 4, 2, 100), ("compact", 2, 300)]}]
    bw, peak, floor = G.H100["bandwidth"], G.H100["flops"], 2e-6

    def step(R, read, attn_launches, sampler_split):
        gemm = max(1e6 / bw, 1e9 * R / peak, floor)
        attn = max((64 * R + read * 3000 / 3) / bw, read * 30 / 3 / peak, floor) + (attn_launches - 1) * floor
        sampler = max(40000 * R / bw, G.sampler_seconds(R * 20000), floor)
        sampler += (floor + max(8 * R / bw, floor)) if sampler_split else 0.0
        return max(100 * R / bw, floor) + 3 * (gemm + attn) + sampler

    prefill = 2 * 1e9 * 2 * 100 / peak
    compaction = 4 * 2 * 300 * 3000 / bw
    want = step(4, 500, 1, True) + step(512, 90000, 1, False) + prefill + compaction
    got = G.step_time_model(m, sched, eng)
    assert got["seconds"] == pytest.approx(want, rel=1e-12) and got["steps"] == 2
    assert G.kernels_per_step(eng, m, 4, 256) == 1 + 3 * 2 + 3 and G.kernels_per_step(eng, m, 512, 4608) == 8
    # one row over 4,608 slots: the attention splits too (18 programs per kv head), a second launch in each layer
    assert G.step_seconds(eng, m, 1, 4608, 10) == pytest.approx(step(1, 10, 2, True), rel=1e-12)


def test_the_reads_report_ends_with_the_predicted_rollouts():
    r = subprocess.run([sys.executable, "bench/generate.py", "--reads"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    *_, model, kernels, paged = r.stdout.strip().splitlines()
    assert model.startswith("predicted rollout per GPU (H100 model, 2 us a kernel): r1-distill-qwen-1.5b ")
    (after_15, before_15), (after_4, before_4) = [(float(a), float(b)) for a, b in
                                                  re.findall(r"([\d.]+) s \(before: ([\d.]+) s\)", model)]
    assert after_15 <= 0.85 * before_15 and after_4 <= 0.85 * before_4  # the fused decode step's acceptance
    assert kernels.startswith("kernels per decode step: r1-distill-qwen-1.5b ") and "qwen3-4b" in kernels
    (a15, b15), (a4, b4) = [(int(a), int(b)) for a, b in re.findall(r"(\d+) \(before: (\d+)\)", kernels)]
    assert a15 <= 12 * 28 + 20 and a4 <= 12 * 36 + 20 and a15 < b15 and a4 < b4
    assert paged.startswith("paged vs static cache (H100 model): r1-distill-qwen-1.5b ")
    (p15, s15), (p4, s4) = [(float(a), float(b)) for a, b in re.findall(r"([\d.]+) s vs ([\d.]+) s", paged)]
    assert p15 <= s15 and p4 <= 0.85 * s4  # the paged cache's acceptance
