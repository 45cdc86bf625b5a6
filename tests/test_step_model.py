"""bench/generate.py's step-time model of a rollout, on a schedule small enough to price by hand, and the --reads
report's last line as the issue tracker and the closing notes read it."""

import os
import re
import subprocess
import sys

import pytest

from bench import generate as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_step_time_model_prices_a_schedule_as_computed_by_hand():
    m = dict(matmul=1e9, slot_bytes=1000, layer_bytes=100, vocab=1000, attn_flops_per_slot=10)
    # one decode step of 4 rows run (3 in the batch, 2 active) over 256 slots reading 500 row-slots; one admission
    # prefilling 2 distinct prompts padded to 100 tokens; one compaction keeping 2 rows of 300 slots
    sched = [{"steps_trace": [(4, 256, 3, 2, 500)], "events": [("prefill", 4, 2, 100), ("compact", 2, 300)]}]
    bw, peak = G.H100["bandwidth"], G.H100["flops"]
    prefill = 2 * 1e9 * 2 * 100 / peak
    compaction = 4 * 2 * 300 * 1000 / bw
    flops = 2 * 1e9 * 4 + 500 * 10
    torch_bytes = 2e9 + 500 * 1000 + 4 * 100 + 1000 * (4 * (2 + 2 + 4 + 4 + 4) + 3 * (8 + 8 + 8 + 12 + 16))
    want = max(torch_bytes / bw, flops / peak) + 20e-6 + prefill + compaction
    assert G.step_time_model(m, sched)["seconds"] == pytest.approx(want, rel=1e-12)
    fused_bytes = 2e9 + 500 * 1000 + 4 * 100 + 1000 * 4 * 2  # the step writes bf16 logits; the kernel reads them
    sampler = max(2 * 4000 / bw, 4000 / G.SFU, 12 * 4000 / G.FP32, 5 * 4000 / G.INT32)
    want = max(fused_bytes / bw, flops / peak) + 20e-6 + sampler + prefill + compaction
    assert G.step_time_model(m, sched, sampler="blocks")["seconds"] == pytest.approx(want, rel=1e-12)
    race = max(2 * 4000 / bw, 3 * 4000 / G.SFU, 6 * 4000 / G.FP32, 12 * 4000 / G.INT32)
    assert G.step_time_model(m, sched, sampler="race")["seconds"] == pytest.approx(want - sampler + race, rel=1e-12)


def test_the_reads_report_ends_with_the_predicted_rollouts():
    r = subprocess.run([sys.executable, "bench/generate.py", "--reads"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("predicted rollout per GPU (H100 model): r1-distill-qwen-1.5b ") and "qwen3-4b" in last
    (after_15, before_15), (after_4, before_4) = [(float(a), float(b)) for a, b in
                                                  re.findall(r"([\d.]+) s \(before: ([\d.]+) s\)", last)]
    assert after_15 <= before_15 and after_4 < before_4  # the one-call engine and the fused sampler never cost time
