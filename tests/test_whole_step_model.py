"""bench/step.py's model of a whole GRPO step: its recordings against what the trainer runs, its pricing of the head
and the loss by hand, and its last line as the closing notes read it."""

import os
import re
import subprocess
import sys

import pytest
from bench import step as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(model_type="qwen3"):
    from adamame.model import ModelConfig

    return ModelConfig.from_dict(dict(model_type=model_type, vocab_size=997, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64))


def _flops(ops, name=None):
    return sum(f for n, _, _, f in ops if name is None or n == name)


def test_a_recorded_pass_holds_the_layers_kernels_gemms_and_flash_attention():
    cfg, b, T = _small(), 3, 128
    fused = S.record_pass(cfg, b, T, kernels=True, train=True, ckpt=False, layers=1)
    eager = S.record_pass(cfg, b, T, kernels=False, train=True, ckpt=False, layers=1)
    names = {n for n, *_ in fused}
    for op in ("adamame.rmsnorm", "adamame.add_rmsnorm", "adamame.rope", "adamame.silu_mul", "adamame.rmsnorm_backward",
               "adamame.silu_mul_backward", "bench.flash", "bench.flash_backward"):
        assert op in names, op
    assert not any(n.startswith("adamame.") for n, *_ in eager)
    # causal flash attention: 2 b H T^2 d forward, 2.5 times that backward (one layer)
    fwd = 2 * b * cfg.num_attention_heads * T * T * cfg.head_dim
    assert _flops(fused, "bench.flash") == fwd and _flops(fused, "bench.flash_backward") == 2.5 * fwd
    # the GEMMs are the same work on both paths: the kernels change only the elementwise ops, which move fewer bytes
    assert _flops(fused, "aten.mm") == _flops(eager, "aten.mm") > 0
    assert len(fused) < len(eager) and sum(nb for _, _, nb, _ in fused) < sum(nb for _, _, nb, _ in eager)
    # activation checkpointing recomputes the layer's forward inside the backward
    ckpt = S.record_pass(cfg, b, T, kernels=True, train=True, ckpt=True, layers=1)
    fwd_only = S.record_pass(cfg, b, T, kernels=True, train=False, ckpt=False, layers=1)
    assert _flops(ckpt, "bench.flash") == 2 * fwd
    # (within 2%: the recomputation stops once it has what the backward needs, before the layer's last adapter)
    assert _flops(fwd_only) * 0.98 <= _flops(ckpt) - _flops(fused) <= _flops(fwd_only)


def test_the_head_and_loss_are_priced_from_their_shapes_as_computed_by_hand():
    cfg = _small()
    n, C, V = 5000, cfg.hidden_size, cfg.vocab_size
    bw, peak, floor = S.H100["bandwidth"], S.H100["flops"], S.KERNEL_FLOOR
    gemm = max(2 * n * C * V / peak, 2 * (n * C + V * C + n * V) / bw, floor)
    read = max(2 * n * V / bw, floor)
    assert S.head_seconds(cfg, n, train=False, chunk=None) == pytest.approx(gemm + read)
    assert S.head_seconds(cfg, n, train=True, chunk=None) == pytest.approx(2 * gemm + 3 * read)
    assert S.head_seconds(cfg, n, train=True, chunk=8192) == pytest.approx(3 * gemm + 4 * read)


def test_the_micro_batches_are_the_trainers():
    plens, resp = [10, 30, 20, 5], [100, 50, 300, 7]
    shapes = S.micro_batch_shapes(plens, resp, [0, 1, 2, 3], 250)
    # sorted by length 12, 80, 110, 320: [12, 80] (2 x 80 <= 250; 3 x 110 is not), [110], [320] alone
    assert shapes == [(2, 80, 57), (1, 110, 100), (1, 320, 300)]


def test_the_step_model_ends_with_the_predicted_step_and_meets_the_issues_bound():
    r = subprocess.run([sys.executable, "bench/step.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("predicted GRPO step per GPU (H100 model): r1-distill-qwen-1.5b rollout "), last
    parts = re.findall(r"rollout ([\d.]+) s, log-probs ([\d.]+) s, update ([\d.]+) s, total ([\d.]+) s "
                       r"\(before: ([\d.]+) s\)", last)
    assert len(parts) == 2 and "; qwen3-4b rollout " in last
    for rollout, logprobs, update, total, before in ((float(x) for x in p) for p in parts):
        assert total == pytest.approx(rollout + logprobs + update, abs=1.0)  # + the scoring's fraction of a second
        assert total <= 0.9 * before  # the issue's acceptance
