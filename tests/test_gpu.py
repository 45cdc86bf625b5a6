"""GPU-only checks: compiled kernels, model and generation parity on CUDA in fp32 and bf16, the CUDA-graph decode
step. They skip on machines without CUDA (CI never has a GPU); bench/gpu_check.sh runs them."""

import pytest
import torch

from adamame.generate import generate
from adamame.hf import load_model
from tests.helpers import left_padded_batch, save_tiny_hf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Tolerances per dtype. float32: both implementations compute the same sums in a different order (cuBLAS and SDPA
# kernels may differ), so ~1e-6 relative on logits of magnitude ~1; 1e-4 leaves room. bfloat16: every matmul output
# and activation is rounded to 8 significant bits (relative 2^-8 = 0.4%); a 2-layer model rounds ~10 times along the
# way, and the two implementations round at different places (e.g. RMSNorm's weight multiply), so logits of
# magnitude ~1 can differ by a few 1e-2: 5e-2 is ~12 roundings' worth, and a real bug (a missing bias, a wrong rope)
# moves logits by far more.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
def test_logits_match_transformers_on_cuda(tmp_path, model_type, dtype, tol):
    from transformers import AutoModelForCausalLM

    save_tiny_hf(tmp_path, model_type, num_attention_heads=6, num_key_value_heads=2)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=dtype, attn_implementation="sdpa").cuda().eval()
    ours = load_model(str(tmp_path), dtype=dtype, device="cuda").eval()
    ids, mask, pos = (t.cuda() for t in left_padded_batch([7, 3, 11, 1], 97))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits.float()
        got = ours(ids, positions=pos, mask=mask).float()
    assert (got - ref).abs()[mask].max().item() <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_generation_matches_transformers_on_cuda(tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=dtype).cuda().eval()
    ours = load_model(str(tmp_path), dtype=dtype, device="cuda").eval()
    prompts = [[5, 17, 3, 88], [60], [33, 2, 71, 4, 9, 9]]
    got = generate(ours, prompts, max_new_tokens=10, temperature=0)
    T = 6
    ids = torch.zeros(3, T, dtype=torch.long)
    am = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], am[i, T - len(p):] = torch.tensor(p), 1
    out = hf.generate(input_ids=ids.cuda(), attention_mask=am.cuda(), do_sample=False, max_new_tokens=10,
                      min_new_tokens=10, pad_token_id=0, eos_token_id=None)[:, T:].tolist()
    agree = sum(a == b for s, o in zip(got, out) for a, b in zip(s.tokens, o)) / 30
    assert agree >= (1.0 if dtype == torch.float32 else 0.8)  # bf16 may flip near-ties, then the two texts diverge


def test_cuda_graph_decode_equals_eager(tmp_path):
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path), device="cuda").eval()
    prompts = [[5, 17, 3, 88], [60], [33, 2, 71]]
    kw = dict(max_new_tokens=40, n=3, temperature=1.0, seed=0, return_logprobs=True, eos_token_ids=[7, 11],
              check_every=2, slot_bucket=8)
    a = generate(m, prompts, cuda_graphs=False, **kw)
    b = generate(m, prompts, cuda_graphs=True, **kw)  # rows padded to powers of two, graphs per bucket
    assert [s.tokens for s in a] == [s.tokens for s in b]
    # float32: graphs replay the same kernels, but padded row buckets may pick other cuBLAS algorithms
    assert max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decode_kernel_on_cuda_equals_the_reference_at_the_papers_head_shape(dtype, tol):
    """The Triton decode kernel compiled for this GPU (bf16 dots on tensor cores, which the CPU interpreter does in
    fp32), 12 query / 2 KV heads x 128, ragged ranges, split (few rows) and unsplit (many rows)."""
    from adamame.decode_attention import decode_attention, decode_attention_torch

    for rows, slots in ((4, 4608), (300, 600)):
        g = torch.Generator(device="cuda").manual_seed(rows)
        q = torch.randn(rows, 12, 128, device="cuda", generator=g).to(dtype)
        k, v = (torch.randn(rows, 2, slots, 128, device="cuda", generator=g).to(dtype) for _ in range(2))
        start = torch.randint(0, slots // 2, (rows,), device="cuda", generator=g, dtype=torch.int32)
        end = torch.minimum(start + torch.randint(1, slots, (rows,), device="cuda", generator=g, dtype=torch.int32),
                            torch.tensor(slots, device="cuda", dtype=torch.int32))
        end[0] = start[0]  # a finished row
        W = slots // 32  # each row's blocks, shuffled in the pool
        table = torch.randperm(rows * W, device="cuda", generator=g).view(rows, W).to(torch.int32)
        at = table.long()[:, torch.arange(slots, device="cuda") // 32] * 32 + torch.arange(slots, device="cuda") % 32
        kp, vp = (torch.zeros(rows * slots, 2, 128, device="cuda", dtype=dtype) for _ in range(2))
        kp[at], vp[at] = k.transpose(1, 2), v.transpose(1, 2)
        got = decode_attention(q, kp, vp, table, start, end, 128 ** -0.5).float()
        want = decode_attention_torch(q.float(), kp.float(), vp.float(), table, start, end)
        assert (got - want).abs().max() <= tol and (got[0] == 0).all()


def test_cuda_graph_decode_with_the_kernel_samples_what_sdpa_does(tmp_path, monkeypatch):
    """The engine as it runs on CUDA (graphs, padded row buckets, the Triton decode kernel) against the SDPA hatch, in
    float32 with the same uniforms (one sampler, PyTorch's, on both sides): the same tokens."""
    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=8, num_key_value_heads=2, hidden_size=128)
    m = load_model(str(tmp_path), device="cuda").eval()
    prompts = [[5, 17, 3, 88], [60], [33, 2, 71], list(range(40, 70))]
    kw = dict(max_new_tokens=40, n=3, temperature=1.0, seed=0, return_logprobs=True, eos_token_ids=[7, 11],
              check_every=2, slot_bucket=16, cuda_graphs=True)
    monkeypatch.setenv("ADAMAME_SAMPLER", "torch")
    monkeypatch.setenv("ADAMAME_KERNELS", "torch")
    a = generate(m, prompts, **kw)
    monkeypatch.setenv("ADAMAME_KERNELS", "auto")
    b = generate(m, prompts, **kw)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-4


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_fused_sampler_inside_cuda_graphs_gives_the_models_logprobs(tmp_path, monkeypatch, temperature):
    """generate as it runs on CUDA (graphs, the decode kernel, the fused sampler inside each graph) against a full
    float32 forward: every sampled token's log-probability, and the same tokens with 3 rows refilled."""
    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=8, num_key_value_heads=2, hidden_size=128)
    m = load_model(str(tmp_path), device="cuda").eval()
    prompts = [[5, 17, 3, 88], [60], [33, 2, 71], list(range(40, 70))]
    kw = dict(max_new_tokens=30, n=3, temperature=temperature, seed=4, return_logprobs=True, eos_token_ids=[7, 11],
              check_every=2, cuda_graphs=True)
    monkeypatch.setenv("ADAMAME_SAMPLER", "triton")
    full = generate(m, prompts, **kw)
    assert [s.tokens for s in generate(m, prompts, max_rows=3, **kw)] == [s.tokens for s in full]
    for i, s in enumerate(full):
        ids = torch.tensor([prompts[i // 3] + s.tokens], device="cuda")
        with torch.no_grad():
            z = m(ids)[0, len(prompts[i // 3]) - 1:-1].float()
        ref = torch.log_softmax(z / (temperature or 1.0), -1).gather(1, ids[0, len(prompts[i // 3]):, None])[:, 0]
        assert (torch.tensor(s.logprobs, device="cuda") - ref).abs().max().item() <= 1e-4


def test_the_fused_sampler_kernel_at_the_papers_vocabulary():
    """512 rows x 151,936 bf16 logits on the GPU: log-probabilities within float32 rounding of log softmax(z / T),
    greedy the first maximum, and the tokens of the PyTorch reference (the GPU's exp and scan order may move a draw
    that sits on a CDF boundary: at most 1 in 500)."""
    from adamame.sampler import _launch, sample_torch, seed_tensor

    g = torch.Generator("cuda").manual_seed(0)
    z = (torch.randn(512, 151936, generator=g, device="cuda") * 3).bfloat16()
    inv_t, seed = torch.tensor([1 / 0.8], device="cuda"), seed_tensor(11, "cuda")
    ids, index = torch.arange(512, device="cuda"), torch.full((512,), 9, device="cuda")
    tok, lp = _launch(z, inv_t, seed, ids, index, False)
    want = torch.log_softmax(z.float() / 0.8, -1).gather(1, tok[:, None])[:, 0]
    assert (lp - want).abs().max().item() <= 1e-4
    ref, _ = sample_torch(z, inv_t, seed, ids, index, False)
    assert (tok != ref).sum().item() <= 1
    g_tok, g_lp = _launch(z, inv_t, seed, ids, index, True)
    assert torch.equal(g_tok, z.float().argmax(1))


def test_plan_sizes_are_the_cuda_allocations(tmp_path):
    """The plan's KV cache and rollout copy are exactly the bytes CUDA allocates for them."""
    from adamame.dist import rollout_copy
    from adamame.memory import GiB, grpo_plan
    from adamame.memory import cache_blocks
    from adamame.model import PagedKVCache

    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path), device="cuda")
    plan = grpo_plan(m.config, world=1, total=8 * GiB, device="cuda", prompts_per_step=2, group_size=4,
                     max_prompt_tokens=16, max_response_tokens=32, micro_batch_tokens=512, lora_rank=4, beta=0.0)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    copy = rollout_copy(m)
    assert torch.cuda.memory_allocated() - before >= plan.sizes["rollout_copy"]
    assert sum(p.numel() * p.element_size() for p in copy.parameters()) == plan.sizes["rollout_copy"]
    cache = PagedKVCache.allocate(m.config, cache_blocks(plan.rollout_rows, 16, 32), 8, 2, torch.bfloat16, "cuda")
    assert sum(t.numel() * t.element_size() for t in cache.k + cache.v) == plan.sizes["kv_cache"]


def test_triton_kernel_writes_gradient_in_place_on_cuda():
    from adamame.grpo_kernels import token_logprobs, token_logprobs_torch

    x = torch.randn(64, 151_936, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, 151_936, (64,), device="cuda")
    leaf = x.clone().requires_grad_(True)
    z = leaf * 1
    seen = []
    z.register_hook(lambda g: seen.append(g.data_ptr()))
    lp = token_logprobs(z, t)
    assert (lp - token_logprobs_torch(x.float(), t)).abs().max().item() <= 1e-3
    lp.sum().backward()
    assert seen == [z.data_ptr()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_layer_kernels_on_cuda_equal_their_references_at_the_papers_shapes(dtype):
    """adamame/layer_kernels.py compiled (the CPU tests run them in the interpreter, which truncates where a GPU
    rounds): at the 1.5B's and Qwen3-4B's shapes, within float32 rounding and two units of bf16's last place of the
    largest value (their sums run in another order than PyTorch's)."""
    from adamame import layer_kernels as lk

    def close(got, want):
        ulp2 = 2e-5 if dtype == torch.float32 else 2 * 2 ** -8
        torch.testing.assert_close(got.float(), want.float(), rtol=ulp2, atol=ulp2 * want.float().abs().max().item())

    g = torch.Generator("cuda").manual_seed(0)
    for C, inter, H, KV, norm in ((1536, 8960, 12, 2, False), (2560, 9728, 32, 8, True)):
        R, D, S = 64, 128, 300
        x, r = (torch.randn(R, C, device="cuda", generator=g).to(dtype) for _ in range(2))
        w = (1 + 0.3 * torch.randn(C, device="cuda", generator=g)).to(dtype)
        close(lk.rmsnorm(x, w, 1e-6), lk.rmsnorm_torch(x, w, 1e-6))
        for a, b in zip(lk.add_rmsnorm(x, r, w, 1e-6), lk.add_rmsnorm_torch(x, r, w, 1e-6)):
            close(a, b)
        gu = torch.randn(R, 2 * inter, device="cuda", generator=g).to(dtype)
        close(lk.silu_mul(gu[:, :inter], gu[:, inter:]), lk.silu_mul_torch(gu[:, :inter], gu[:, inter:]))
        qkv = torch.randn(R, (H + 2 * KV) * D, device="cuda", generator=g).to(dtype)
        q, k, v = qkv.split([H * D, KV * D, KV * D], -1)
        pos = torch.randint(0, 4096, (R,), device="cuda", generator=g)
        slot = torch.randint(0, S, (R,), device="cuda", generator=g)
        W = -(-S // 32)  # each row's blocks, shuffled in a pool of R * W blocks
        table = torch.randperm(R * W, device="cuda", generator=g).view(R, W).to(torch.int32)
        inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, device="cuda").float() / D))
        norms = tuple(torch.randn(D, device="cuda", generator=g).to(dtype) for _ in range(2)) if norm else (None, None)
        kc, vc = (torch.randn(R * W * 32, KV, D, device="cuda", generator=g).to(dtype) for _ in range(2))
        kc2, vc2 = kc.clone(), vc.clone()
        close(lk.rope_cache(q, k, v, pos, slot, table, inv, kc, vc, *norms, 1e-6, 32),
              lk.rope_cache_torch(q, k, v, pos, slot, table, inv, kc2, vc2, *norms, 1e-6))
        close(kc, kc2)
        assert torch.equal(vc, vc2)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_training_with_the_layer_kernels_on_cuda_equals_pytorchs(monkeypatch, model_type):
    """The training forward and backward with the layer kernels compiled (the CPU tests run them in the interpreter,
    one program after another): at the 1.5B's widths (hidden 1,536, head_dim 128), with more rows (2 x 1,100 tokens,
    x 12 heads for Qwen3's q norm) than the rmsnorm backward has programs, so each program sums several rows."""
    from tests.helpers import training_grads

    res = training_grads(monkeypatch, device="cuda", T=1100, model_type=model_type, vocab_size=512, hidden_size=1536,
                         intermediate_size=2048, num_attention_heads=12, num_key_value_heads=2, head_dim=128)
    (a, ga), (b, gb) = res["torch"], res["triton"]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-4 * ga[n].abs().max().item(), msg=n)
