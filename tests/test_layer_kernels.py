"""The decode step's fused kernels (adamame/layer_kernels.py, under the interpreter) against their PyTorch references,
the fused decode step against the PyTorch one and transformers, the merged projections, and the kernel count of a
decode step at the paper's two structures (bench/kernel_count.py)."""

import os
import sys

import pytest
import torch

from adamame import layer_kernels as lk
from adamame.model import KVCache, PagedKVCache, merged_param

pytest.importorskip("triton")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import kernel_count  # noqa: E402


def close(got, want, dtype):
    """fp32: within 1e-5; bf16: within four units in bf16's last place of the tensor's largest value (the interpreter
    truncates where a GPU rounds, at up to three roundings in a row, and the rotary's sum of two rounded products can
    cancel)."""
    assert got.dtype == want.dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        ulp4 = 4 * 2 ** -8
        torch.testing.assert_close(got.float(), want.float(), rtol=ulp4, atol=ulp4 * want.float().abs().max().item())


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@DTYPES
@pytest.mark.parametrize("C", [72, 1000])  # not a power of two: the block is masked
def test_rmsnorm_and_add_rmsnorm_equal_their_references(dtype, C):
    g = torch.Generator().manual_seed(C)
    x, r = (3 * torch.randn(5, C, generator=g)).to(dtype), torch.randn(5, C, generator=g).to(dtype)
    w = (1 + 0.5 * torch.randn(C, generator=g)).to(dtype)
    close(lk.rmsnorm(x, w, 1e-6), lk.rmsnorm_torch(x, w, 1e-6), dtype)
    (out, s), (want, want_s) = lk.add_rmsnorm(x, r, w, 1e-6), lk.add_rmsnorm_torch(x, r, w, 1e-6)
    close(out, want, dtype)
    close(s, want_s, dtype)
    # a row-strided input (a column block of a wider tensor) and the reference of the model's own RMSNorm
    wide = torch.randn(5, C + 8, generator=g).to(dtype)[:, 3:3 + C]
    close(lk.rmsnorm(wide, w, 1e-6), lk.rmsnorm_torch(wide.contiguous(), w, 1e-6), dtype)


@DTYPES
@pytest.mark.parametrize("N", [100, 2500])  # one partial block; several blocks
def test_silu_mul_equals_its_reference(dtype, N):
    gu = (2 * torch.randn(4, 2 * N, generator=torch.Generator().manual_seed(N))).to(dtype)
    gate, up = gu.chunk(2, -1)  # the merged gate_up_proj's halves: row-strided
    close(lk.silu_mul(gate, up), lk.silu_mul_torch(gate, up), dtype)


@DTYPES
@pytest.mark.parametrize("H,KV,D,qk_norm", [(12, 2, 128, False), (32, 8, 128, True), (6, 2, 64, False),
                                            (3, 1, 20, True)], ids=["qwen2-1.5b", "qwen3-4b", "hd64", "hd20"])
def test_rope_cache_equals_its_reference_and_writes_only_each_rows_slot(dtype, H, KV, D, qk_norm):
    g = torch.Generator().manual_seed(H * D)
    R, W, P = 4, 2, 9 * 32  # a paged cache: 2 blocks a row, shuffled in a pool of 9 (P slots)
    qkv = torch.randn(R, (H + 2 * KV) * D, generator=g).to(dtype)
    q, k, v = qkv.split([H * D, KV * D, KV * D], -1)  # the merged qkv_proj's column blocks
    positions, slot = torch.tensor([0, 7, 1000, 4095]), torch.tensor([35, 23, 0, 63])  # logical slots
    table = (torch.randperm(8, generator=g) + 1).view(R, W).to(torch.int32)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, D, 2).float() / D))
    norms = (torch.randn(D, generator=g).to(dtype), torch.randn(D, generator=g).to(dtype)) if qk_norm else (None, None)
    kc, vc = torch.randn(P, KV, D, generator=g).to(dtype), torch.randn(P, KV, D, generator=g).to(dtype)
    kc_want, vc_want = kc.clone(), vc.clone()
    got = lk.rope_cache(q, k, v, positions, slot, table, inv_freq, kc, vc, *norms, 1e-6, 32)
    want = lk.rope_cache_torch(q, k, v, positions, slot, table, inv_freq, kc_want, vc_want, *norms, 1e-6)
    assert got.shape == (R, H, D) and got.is_contiguous()
    close(got, want, dtype)
    close(kc, kc_want, dtype)
    assert torch.equal(vc, vc_want)
    others = torch.ones(P, dtype=torch.bool)
    others[table.long()[torch.arange(R), slot // 32] * 32 + slot % 32] = False
    assert torch.equal(kc[others], kc_want[others]) and not torch.equal(kc[~others], kc_want[~others] * 0)


def test_the_rotary_reference_is_the_models():
    """rope_cache_torch is what model.py's prefill does to q and k (rope(), rotate_half, q/k norms), independently
    written: one row, one token, a qwen3-shaped head."""
    from adamame.model import RMSNorm, rotate_half

    g = torch.Generator().manual_seed(0)
    H, KV, D = 4, 2, 16
    q, k, v = torch.randn(1, H * D, generator=g), torch.randn(1, KV * D, generator=g), torch.randn(1, KV * D, generator=g)
    qn, kn = RMSNorm(D, 1e-6), RMSNorm(D, 1e-6)
    with torch.no_grad():
        qn.weight.normal_(generator=g), kn.weight.normal_(generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    pos = torch.tensor([37])
    kc, vc = torch.zeros(64, KV, D), torch.zeros(64, KV, D)  # a pool of 2 blocks; the row holds block 1
    got = lk.rope_cache_torch(q, k, v, pos, torch.tensor([2]), torch.tensor([[1]], dtype=torch.int32), inv_freq, kc,
                              vc, qn.weight.detach(), kn.weight.detach(), 1e-6)
    ang = 37 * inv_freq
    cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    with torch.no_grad():
        qh, kh = qn(q.view(H, D)), kn(k.view(KV, D))
    torch.testing.assert_close(got[0], qh * cos + rotate_half(qh) * sin)
    torch.testing.assert_close(kc[34], kh * cos + rotate_half(kh) * sin)
    torch.testing.assert_close(vc[34], v.view(KV, D))


def _op_cases():
    from adamame.decode_attention import decode_attention
    from adamame.sampler import sample, seed_tensor

    g = torch.Generator().manual_seed(1)
    x, r, w = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g), torch.randn(40, generator=g)
    q, k, v = torch.randn(3, 4 * 16, generator=g), torch.randn(3, 2 * 16, generator=g), torch.randn(3, 2 * 16, generator=g)
    kc, vc = torch.zeros(96, 2, 16), torch.zeros(96, 2, 16)
    pos, slot, inv = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]), torch.rand(8)
    t3 = torch.arange(3, dtype=torch.int32).view(3, 1)
    members = torch.tensor([[0, 1] + [-1] * 6, [-1] * 8, [2] + [-1] * 7], dtype=torch.int32)
    qa = torch.randn(3, 4, 16, generator=g)
    ka, va = torch.randn(3 * 608, 2, 16, generator=g), torch.randn(3 * 608, 2, 16, generator=g)
    table = torch.arange(3 * 19, dtype=torch.int32).view(3, 19)  # 608 slots a row
    start, end = torch.zeros(3, dtype=torch.int32), torch.full((3,), 600, dtype=torch.int32)
    end3 = end // 3
    pend = end3 // 2
    z = torch.randn(3, 20000, generator=g)
    sargs = (torch.ones(1), seed_tensor(1, "cpu"), torch.arange(3), torch.zeros(3, dtype=torch.long), False)
    return {
        "rmsnorm": lambda: lk.rmsnorm(x, w, 1e-6),
        "add_rmsnorm": lambda: lk.add_rmsnorm(x, r, w, 1e-6),
        "rope_cache": lambda: lk.rope_cache(q, k, v, pos, slot, t3, inv, kc, vc, None, None, 1e-6, 32),
        "silu_mul": lambda: lk.silu_mul(x, r),
        "decode_attention-split": lambda: decode_attention(qa, ka, va, table, start, end, 0.25),  # 608 slots: 2
        "decode_attention": lambda: decode_attention(qa, ka, va, table[:, :7], start, end3, 0.25),
        "decode_attention-cascade": lambda: decode_attention(qa, ka, va, table[:, :7], start, end3, 0.25, members,
                                                             pend),  # prompts, rows, merge: 3
        "decode_attention-cascade-split": lambda: decode_attention(qa, ka, va, table, start, end, 0.25, members,
                                                                   end3),  # 3 as well
        "sample-split": lambda: sample(z, *sargs),  # 3 rows x 20,000: 2 programs a row
        "sample": lambda: sample(z[:, :5000], *sargs),
    }


@pytest.mark.parametrize("case", list(_op_cases()))
def test_each_adamame_op_is_its_kernel_launches_and_nothing_else(monkeypatch, case):
    """What bench/kernel_count.py assumes of an adamame op on the meta device (kernel_count.launches): run here with
    its body recorded, it launches exactly that many Triton kernels, and dispatches no aten op but empties."""
    monkeypatch.setenv("ADAMAME_KERNELS", "triton")
    run, rec = _op_cases()[case], kernel_count.recorder(expand=True)
    with rec, torch.no_grad():
        run()
    assert len(rec.ops) == 1, rec.ops  # the op itself: nothing inside it launches a PyTorch kernel
    name, kernels, _, _ = rec.ops[0]
    want = 3 if "cascade" in case else 1 + case.endswith("split")  # the cascade: prompts, rows, merge
    assert kernels == rec.launched == want, (name, kernels, rec.launched)


def _hf_pair(tmp_path, model_type, **extra):
    from adamame.hf import load_model
    from tests.helpers import save_tiny_hf

    hf = save_tiny_hf(tmp_path / model_type, model_type, **extra)
    return hf, load_model(str(tmp_path / model_type)).eval()


STRUCTURES = [("qwen2", dict(num_attention_heads=6, num_key_value_heads=2)),
              ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
              ("llama", dict(num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True))]


@pytest.mark.parametrize("model_type,extra", STRUCTURES, ids=[s[0] for s in STRUCTURES])
@pytest.mark.parametrize("merged", [False, True], ids=["hf-layout", "merged"])
def test_the_fused_decode_step_equals_the_pytorch_step_and_transformers(tmp_path, monkeypatch, model_type, extra,
                                                                        merged):
    """Rows of different ages (prompts of different lengths, left-padded) decode one token each from a paged cache
    (their blocks shuffled in the pool): the fused step's logits and cache writes equal the PyTorch step's (SDPA)
    within 1e-5 in fp32, and transformers' logits for the whole sequence at its last position."""
    hf, model = _hf_pair(tmp_path, model_type, **extra)
    if merged:
        model.merge_projections()
    cfg, R, S = model.config, 3, 64
    lens = [5, 9, 2]
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, cfg.vocab_size, (n + 1,), generator=g) for n in lens]
    caches = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("ADAMAME_KERNELS", mode)
        cache = KVCache.allocate(cfg, R, S, torch.float32, "cpu")
        Tp = max(lens)
        ids = torch.zeros(R, Tp, dtype=torch.long)
        mask = torch.zeros(R, Tp, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, Tp - lens[i]:], mask[i, Tp - lens[i]:] = s[:-1], True
        pos = (mask.sum(-1, keepdim=True) - Tp + torch.arange(Tp)).clamp(min=0)
        monkeypatch.setenv("ADAMAME_KERNELS", "torch")  # the prefill is the same for both
        with torch.no_grad():
            model(ids, positions=pos, mask=mask, cache=cache, logits_at=slice(-1, None))
        monkeypatch.setenv("ADAMAME_KERNELS", mode)
        paged = PagedKVCache.allocate(cfg, R * S // 32 + 1, R, S // 32, torch.float32, "cpu")
        paged.table.copy_(torch.randperm(R * S // 32, generator=torch.Generator().manual_seed(1)).view(R, -1) + 1)
        at = paged.where(R, torch.arange(S).expand(R, S))
        for pool, c in zip(paged.k + paged.v, cache.k + cache.v):
            pool[at] = c.transpose(1, 2)
        tokens = torch.stack([s[-1] for s in seqs])
        with torch.no_grad():
            logits = model.decode_step(tokens, torch.tensor(lens), paged, torch.full((R,), Tp), R, S)
        caches[mode] = (logits, paged, at)
    (want, c_want, at), (got, c_got, _) = caches["torch"], caches["triton"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    used = at[:, :max(lens) + 1].flatten()
    for a, b in zip(c_got.k + c_got.v, c_want.k + c_want.v):
        torch.testing.assert_close(a[used], b[used], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for i, s in enumerate(seqs):
            torch.testing.assert_close(got[i], hf(s[None]).logits[0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,extra", STRUCTURES, ids=[s[0] for s in STRUCTURES])
def test_merged_projections_are_the_same_function_and_map_back_to_each_part(tmp_path, model_type, extra):
    _, model = _hf_pair(tmp_path, model_type, **extra)
    before = dict(model.named_parameters())
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)
        model.merge_projections()
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    layer = model.model.layers[0]
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "up_proj")
    for name, p in before.items():
        assert torch.equal(merged_param(model, name), p), name
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in before.values())


@pytest.mark.parametrize("name", kernel_count.MODELS)
def test_a_decode_step_runs_at_most_12_kernels_a_layer_and_20_outside(monkeypatch, name):
    """The paper's two structures (their config.json: heads, head_dim, q/k/v bias, Qwen3's q/k norms, tied lm_head;
    hidden and intermediate sizes and vocabulary cut so the interpreter runs it), one decode step with the fused
    sampler as the GPU runs it: aten ops dispatched (views and empties excluded) plus Triton launches, counted with the
    kernels forced under the interpreter, at 3 rows x 600 slots (the attention and the sampler split: their most
    kernels) and at 64 rows x 256 slots and a vocabulary of 8,000 (unsplit). The count on the meta device agrees."""
    import dataclasses

    monkeypatch.setenv("ADAMAME_KERNELS", "triton")
    real = kernel_count.paper_config(name)
    for rows, slots, vocab, split in ((3, 600, 20000, 1), (64, 256, 8000, 0)):
        small = dataclasses.replace(real, intermediate_size=256, vocab_size=vocab)
        counts = []
        for device in ("cpu", "meta"):
            torch.manual_seed(0)
            parts = kernel_count.per_layer(small, rows, slots, device=device, dtype=torch.float32)
            counts.append(kernel_count.summary(parts, real.num_hidden_layers))
        assert counts[0] == counts[1], counts
        c = counts[0]
        assert c["layer"] <= 12 and c["outside"] <= 20, c
        assert c["layer"] == 11 and c["outside"] == 9 + split, c  # today's count: a change shows here
    names = [n for n, _, _, _ in kernel_count.per_layer(real, 512, 4608)["layer"]]
    assert names.count("aten.addmm" if real.qkv_bias else "aten.mm") >= 1 and len(names) == 9


# ---------------------------------------------------------------------------------------------- training: backward

def _grads(fn, inputs, seeds):
    """Gradients of sum_i <out_i, seed_i> w.r.t. inputs (fresh leaves), and the outputs."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum((o.float() * s).sum() for o, s in zip(outs, seeds)).backward()
    return outs, [x.grad for x in leaves]


def _model_rope(q, k, cos, sin):  # adamame/model.py's rotary, written as the model writes it
    R, D = cos.shape
    q, k = q.view(R, -1, D), k.view(R, -1, D)
    c, s = cos[:, None], sin[:, None]
    return q * c + lk.rotate_half(q) * s, k * c + lk.rotate_half(k) * s


@DTYPES
@pytest.mark.parametrize("R,C", [(7, 72), (300, 1000)])
def test_training_kernels_gradients_equal_autograd_through_the_references(monkeypatch, dtype, R, C):
    """Each training op's forward and backward kernels against autograd through its PyTorch reference: inputs and
    the norm weight's gradient, fp32 within 1e-5 (bf16 within a few units of its last place). With 3 backward
    programs every program sums several rows' weight gradient (on a GPU: 2,048 programs over 32k rows)."""
    monkeypatch.setattr(lk, "BWD_PROGRAMS", 3)
    g = torch.Generator().manual_seed(R + C)
    rnd = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g)).to(dtype)  # noqa: E731
    x, r, w = rnd(R, C, scale=3.0), rnd(R, C), (1 + 0.5 * torch.randn(C, generator=g)).to(dtype)
    d1, d2 = torch.randn(R, C, generator=g), torch.randn(R, C, generator=g)
    for ours, ref, inputs, seeds in (
            (lambda a, b: lk.rmsnorm(a, b, 1e-6), lambda a, b: lk.rmsnorm_torch(a, b, 1e-6), (x, w), (d1,)),
            (lambda a, b, c: lk.add_rmsnorm(a, b, c, 1e-6), lambda a, b, c: lk.add_rmsnorm_torch(a, b, c, 1e-6),
             (x, r, w), (d1, d2)),
            (lk.silu_mul, lk.silu_mul_torch, (x, r), (d1,))):
        (got_out, got), (want_out, want) = _grads(ours, inputs, seeds), _grads(ref, inputs, seeds)
        for a, b in zip(got_out + tuple(got), want_out + tuple(want)):
            if dtype == torch.float32:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            else:  # bf16: the weight's gradient sums R rounded products in the reference, ours in float32
                tol = 2 ** -6 * max(b.float().abs().max().item(), 1.0)
                torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -6, atol=tol)


@DTYPES
@pytest.mark.parametrize("H,KV,D", [(12, 2, 128), (3, 1, 20)])
def test_training_rope_and_its_backward_equal_the_models_rotary(dtype, H, KV, D):
    g = torch.Generator().manual_seed(D)
    R = 6
    q, k = torch.randn(R, H * D, generator=g).to(dtype), torch.randn(R, KV * D, generator=g).to(dtype)
    ang = torch.arange(R)[:, None].float() * (1.0 / (1e6 ** (torch.arange(0, D, 2).float() / D)))
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dtype), torch.cat([ang.sin()] * 2, -1).to(dtype)
    seeds = (torch.randn(R, H, D, generator=g), torch.randn(R, KV, D, generator=g))
    (got_out, got), (want_out, want) = (_grads(lambda a, b: f(a, b, cos, sin), (q, k), seeds)
                                        for f in (lk.rope, _model_rope))
    for a, b in zip(got_out + tuple(got), want_out + tuple(want)):
        close(a, b.reshape(a.shape), dtype)


@pytest.mark.parametrize("model_type,extra", [("qwen2", {}), ("qwen3", {}), ("llama", {"mlp_bias": True})])
@pytest.mark.parametrize("lora", [False, True])
def test_the_training_forward_and_backward_with_kernels_equal_pytorchs(monkeypatch, model_type, extra, lora):
    """The model's training forward with the layer kernels (ADAMAME_KERNELS=triton, the interpreter) against the same
    model in PyTorch ops: logits and the gradient of every trainable parameter (and of the norms' weights with full
    fine-tuning), fp32 within 1e-5; with LoRA, through activation checkpointing too."""
    from tests.helpers import training_grads

    results = training_grads(monkeypatch, lora=lora, model_type=model_type, vocab_size=61, hidden_size=48,
                             intermediate_size=72, num_attention_heads=4, num_key_value_heads=2, head_dim=12, **extra)
    (a, ga), (b, gb) = results["torch"], results["triton"]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 0
    assert lora or any("norm" in n for n in ga)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-5, atol=1e-5, msg=n)
