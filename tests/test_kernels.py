"""Triton kernels against the float32 PyTorch reference (interpreter on CPU, compiled on a GPU)."""

import math

import pytest
import torch

from adamame import grpo_kernels as kernels
from adamame.grpo_kernels import (grpo_loss, grpo_loss_from_hidden, grpo_loss_torch, policy_loss, token_logprobs,
                             token_logprobs_from_hidden, token_logprobs_torch)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_path(monkeypatch):
    if kernels.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("ADAMAME_KERNELS", "triton")


def _logits(shape, dtype=torch.float32, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(DEV)


def _targets(shape, V, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, shape, generator=g).to(DEV)


# ---- token_logprobs ----

@pytest.mark.parametrize("V", [151_936, 32_000, 1_009])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_float32_match_reference(triton_path, V, temperature):
    x, t = _logits((2, 3, V)), _targets((2, 3), V)
    ref = token_logprobs_torch(x.double(), t, temperature).float()
    got = token_logprobs(x.clone(), t, temperature)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("V", [151_936, 1_009])
def test_logprobs_bfloat16_match_float32_math_on_same_inputs(triton_path, V):
    x, t = _logits((4, V), torch.bfloat16), _targets((4,), V)
    ref = token_logprobs_torch(x.float(), t, 0.8)
    got = token_logprobs(x.clone(), t, 0.8)
    assert (got - ref).abs().max().item() <= 1e-3


@pytest.mark.parametrize("V,temperature,dtype", [(151_936, 1.0, torch.float32), (1_009, 0.6, torch.float32),
                                                 (32_000, 1.3, torch.bfloat16)])
def test_logprobs_gradient_matches_reference_and_is_written_in_place(triton_path, V, temperature, dtype):
    x, t = _logits((2, 2, V), dtype), _targets((2, 2), V)
    g = torch.randn(2, 2, device=DEV)
    xr = x.float().clone().requires_grad_(True)
    (token_logprobs_torch(xr, t, temperature) * g).sum().backward()
    leaf = x.clone().requires_grad_(True)
    xt = leaf.clone()  # a non-leaf, like the lm_head output in training
    seen = []
    xt.register_hook(lambda grad: seen.append(grad.data_ptr()))
    (token_logprobs(xt, t, temperature) * g).sum().backward()
    assert seen == [xt.data_ptr()]  # d(logits) was written into the logits buffer: no second [tokens x vocab]
    if dtype == torch.float32:
        assert (leaf.grad - xr.grad).abs().max().item() <= 1e-5
    else:  # the gradient is stored in bf16: compare within bf16 rounding (8 significant bits)
        torch.testing.assert_close(leaf.grad.float(), xr.grad, rtol=2**-7, atol=1e-6)


def test_inplace_false_keeps_logits(triton_path):
    x, t = _logits((3, 1_009)), _targets((3,), 1_009)
    xt = x.clone().requires_grad_(True)
    token_logprobs(xt, t, inplace=False).sum().backward()
    assert torch.equal(xt.detach(), x) and xt.grad.data_ptr() != xt.data_ptr()
    xr = x.clone().requires_grad_(True)
    token_logprobs_torch(xr, t).sum().backward()
    assert (xt.grad - xr.grad).abs().max().item() <= 1e-5


def test_strided_slice_of_logits_needs_no_copy(triton_path):
    full = _logits((2, 5, 1_009))
    t = _targets((2, 4), 1_009)
    sl = full[:, :-1]  # the usual "predict the next token" slice: not contiguous
    assert not sl.is_contiguous()
    assert (token_logprobs(sl, t) - token_logprobs_torch(sl, t)).abs().max().item() <= 1e-5
    xr = full.clone().requires_grad_(True)
    token_logprobs_torch(xr[:, :-1], t).sum().backward()
    xt = full.clone().requires_grad_(True)
    token_logprobs(xt[:, :-1], t, inplace=False).sum().backward()
    assert (xt.grad - xr.grad).abs().max().item() <= 1e-5


def test_auto_dispatch_on_cpu_uses_reference(monkeypatch):
    monkeypatch.setenv("ADAMAME_KERNELS", "auto")
    x = torch.randn(3, 50)
    xt = x.clone().requires_grad_(True)
    token_logprobs(xt, torch.tensor([1, 2, 3])).sum().backward()
    assert torch.equal(xt.detach(), x)  # reference path: logits untouched
    monkeypatch.setenv("ADAMAME_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="ADAMAME_KERNELS"):
        token_logprobs(x, torch.tensor([1, 2, 3]))


# ---- grpo_loss: every combination that changes the math ----

B, L, V = 3, 5, 1_009


def _loss_inputs(adv_kind, old_kind, seed=0):
    x, t = _logits((B, L, V), seed=seed), _targets((B, L), V, seed=seed + 1)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
    mask[0, 3:] = False  # a short response
    mask[2, :1] = False
    adv = {"zero": torch.zeros(B), "mixed": torch.tensor([1.5, -0.7, 0.3])}[adv_kind].to(DEV)
    logp = token_logprobs_torch(x, t)
    g = torch.Generator().manual_seed(seed + 2)
    if old_kind is None:
        old = None
    elif old_kind == "inside":  # ratios within [0.8, 1.2]
        old = logp + (torch.rand(B, L, generator=g).to(DEV) - 0.5) * 0.2
    else:  # many ratios outside the clip range, on both sides
        old = logp + (torch.rand(B, L, generator=g).to(DEV) - 0.5) * 2.0
    ref = logp + (torch.rand(B, L, generator=g).to(DEV) - 0.5) * 1.0
    return x, t, adv, mask, old, ref


@pytest.mark.parametrize("aggregation", ["dr_grpo", "token_mean", "seq_mean"])
@pytest.mark.parametrize("adv_kind", ["zero", "mixed"])
@pytest.mark.parametrize("old_kind", [None, "inside", "outside"])
@pytest.mark.parametrize("beta", [0.0, 0.04, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_grpo_loss_and_grad_match_reference(triton_path, aggregation, adv_kind, old_kind, beta, dtype):
    """The fused kernel (log-prob, surrogate, k3 and clip flag in one pass; dL/dlogp and d(logits) in its backward)
    against policy_loss(token_logprobs_torch(...)). beta None: no reference at all (beta 0, no KL term)."""
    x, t, adv, mask, old, ref = _loss_inputs(adv_kind, old_kind)
    x = x.to(dtype)
    kw = dict(old_logprobs=old, ref_logprobs=None if beta is None else ref, beta=beta or 0.0, temperature=0.9,
              aggregation=aggregation, max_tokens=8, clip_eps=0.2, clip_eps_high=0.28)
    xr = x.clone().requires_grad_(True)
    loss_r, st_r = grpo_loss_torch(xr, t, adv, mask, **kw)
    loss_r.backward()
    xt = x.clone().requires_grad_(True)
    loss_t, st_t = grpo_loss(xt, t, adv, mask, **kw)
    loss_t.backward()
    assert abs(loss_t.item() - loss_r.item()) <= 1e-5
    for k in ("clip_frac", "kl", "ratio"):
        assert abs(st_t[k].item() - st_r[k].item()) <= 1e-5, k
    diff = (xt.grad.float() - xr.grad.float()).abs()
    if dtype == torch.float32:
        assert diff.max().item() <= 1e-5
    else:  # both round the same float32 gradient to bf16 (the interpreter truncates where torch rounds): one unit
        assert (diff <= xr.grad.float().abs() * 2 ** -7 + 1e-30).all()
    if old_kind == "outside" and adv_kind == "mixed":
        assert 0 < st_r["clip_frac"].item() < 1


def test_grpo_loss_at_full_qwen_vocab(triton_path):
    Vq = 151_936
    x, t = _logits((2, 2, Vq), torch.bfloat16), _targets((2, 2), Vq)
    adv, mask = torch.tensor([1.0, -2.0], device=DEV), torch.tensor([[1, 1], [1, 0]], dtype=torch.bool, device=DEV)
    old = token_logprobs_torch(x, t) + 0.3
    xr = x.float().requires_grad_(True)
    lr, _ = grpo_loss_torch(xr, t, adv, mask, old_logprobs=old, max_tokens=4, beta=0.0)
    lr.backward()
    xt = x.clone().requires_grad_(True)
    lt, _ = grpo_loss(xt, t, adv, mask, old_logprobs=old, max_tokens=4, beta=0.0)
    lt.backward()
    assert abs(lt.item() - lr.item()) <= 1e-3
    assert (xt.grad.float() - xr.grad).abs().max().item() <= 1e-3


# ---- the loss formulas, against a hand-written per-token loop ----

def _loop_loss(logp, adv, mask, old, ref, eps_lo, eps_hi, beta, aggregation, max_tokens):
    Bn, Ln = len(logp), len(logp[0])
    seq_terms, tok_sum, tok_n, kl_sum = [], 0.0, 0, 0.0
    for i in range(Bn):
        s, n = 0.0, 0
        for k in range(Ln):
            if not mask[i][k]:
                continue
            rho = math.exp(logp[i][k] - old[i][k])
            clipped = min(max(rho, 1 - eps_lo), 1 + eps_hi)
            term = max(-adv[i] * rho, -adv[i] * clipped)
            d = ref[i][k] - logp[i][k]
            kl_sum += min(max(math.exp(d) - d - 1, -10), 10)
            s, n = s + term, n + 1
        seq_terms.append((s, n))
        tok_sum, tok_n = tok_sum + s, tok_n + n
    if aggregation == "dr_grpo":
        pg = sum(s / max_tokens for s, _ in seq_terms) / Bn
    elif aggregation == "token_mean":
        pg = tok_sum / tok_n
    else:
        pg = sum(s / max(n, 1) for s, n in seq_terms) / Bn
    return pg + beta * kl_sum / tok_n


@pytest.mark.parametrize("aggregation", ["dr_grpo", "token_mean", "seq_mean"])
def test_policy_loss_equals_per_token_loop(aggregation):
    g = torch.Generator().manual_seed(5)
    logp = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5)
    ref = logp + (torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5) * 30  # some k3 values hit the clamp
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    got, _ = policy_loss(logp.float(), adv, mask, old_logprobs=old, ref_logprobs=ref, clip_eps=0.2,
                         clip_eps_high=0.3, beta=0.1, aggregation=aggregation, max_tokens=6)
    want = _loop_loss(logp.tolist(), adv.tolist(), mask.tolist(), old.tolist(), ref.tolist(), 0.2, 0.3, 0.1,
                      aggregation, 6)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("aggregation", ["dr_grpo", "token_mean", "seq_mean"])
def test_off_response_log_probs_cannot_poison_the_gradient(aggregation):
    """A masked position holding logp = -89 against stored old/ref log-probs of 0 (what pack fills in) must leave
    every gradient finite: exp(0 - (-89)) overflows float32, and 0 * inf would be NaN."""
    logp = torch.tensor([[-0.5, -1.0, -89.0], [-2.0, -89.0, -95.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    zeros = torch.zeros(2, 3)
    old = torch.where(mask, logp.detach() + 0.1, zeros)
    loss, st = policy_loss(logp, torch.tensor([1.0, -1.0]), mask, old_logprobs=old, ref_logprobs=zeros, beta=0.04,
                           aggregation=aggregation, max_tokens=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[~mask] == 0).all() and (logp.grad[mask] != 0).all()
    assert all(torch.isfinite(v) for v in st.values())


@pytest.mark.parametrize("aggregation", ["dr_grpo", "seq_mean"])
def test_fused_loss_at_the_edges_equals_the_reference(triton_path, aggregation):
    """The fused kernel where the reference's branches meet: k3 past its clamp (ref far above and below log pi),
    ratios exactly 1 (old = log pi: torch.maximum's tie), ratios on the clip boundaries' both sides, advantage 0, and
    garbage old / ref (+-500) at masked positions, which must give no gradient and no NaN."""
    x, t = _logits((B, L, V), seed=3), _targets((B, L), V, seed=4)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
    mask[1, 2:] = False
    logp = token_logprobs_torch(x, t)
    old = logp.clone()  # ties: ratio exactly 1
    old[0] += torch.tensor([0.0, 0.5, -0.5, 0.0, 0.3], device=DEV)  # clipped on both sides, and not
    ref = logp.clone()
    ref[0, :3] += torch.tensor([30.0, -30.0, 0.0], device=DEV)  # k3 beyond 10 (clamped) and on the other side
    ref[2] += 20.0
    old[~mask], ref[~mask] = 500.0, -500.0
    adv = torch.tensor([1.3, -0.6, 0.0], device=DEV)
    kw = dict(old_logprobs=old, ref_logprobs=ref, beta=0.04, aggregation=aggregation, max_tokens=8, clip_eps=0.2)
    xr, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (lr, sr), (lt, st) = grpo_loss_torch(xr, t, adv, mask, **kw), grpo_loss(xt, t, adv, mask, **kw)
    lr.backward()
    lt.backward()
    assert torch.isfinite(lt) and torch.isfinite(xt.grad).all()
    assert abs(lt.item() - lr.item()) <= 1e-5 and all(abs(st[k].item() - sr[k].item()) <= 1e-5 for k in sr)
    assert (xt.grad - xr.grad).abs().max().item() <= 1e-5
    assert (xt.grad[1, 2:] == 0).all() and sr["clip_frac"].item() > 0


def test_on_policy_ratio_is_one_and_gradient_is_advantage_weighted():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -4.0]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    loss, st = policy_loss(logp, adv, mask, max_tokens=4, beta=0.0)
    loss.backward()
    assert st["ratio"].item() == 1.0 and st["clip_frac"].item() == 0.0
    # dr_grpo: L = mean_i sum_k m_ik (-A_i) / 4, so dL/dlogp_ik = -A_i m_ik / (4 * 2)
    want = -adv[:, None] * mask.float() / 8
    assert torch.equal(logp.grad, want)


def test_the_defaults_are_the_papers_and_the_kl_cannot_be_dropped_silently():
    """beta 0.001 and the Dr. GRPO normaliser 4096 by default: hand-computed on one sequence; without ref_logprobs
    the default beta is an error, so a copier who forgets the reference is told."""
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    adv, mask = torch.tensor([3.0]), torch.ones(1, 2, dtype=torch.bool)
    loss, st = policy_loss(logp, adv, mask, ref_logprobs=ref)
    k3 = math.exp(-0.5) + 0.5 - 1.0  # position 0; position 1 has d = 0
    assert loss.item() == pytest.approx(-3.0 * 2 / 4096 + 0.001 * k3 / 2, rel=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, adv, mask)


def test_beta_without_reference_and_bad_aggregation_are_errors():
    logp, adv, mask = torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="unknown aggregation"):
        policy_loss(logp, adv, mask, aggregation="sum")


# ---- chunked hidden-states path ----

@pytest.mark.parametrize("path", ["torch", "triton"])
def test_hidden_chunked_path_equals_logits_path(monkeypatch, path):
    if path == "triton" and kernels.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("ADAMAME_KERNELS", path)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 16, generator=g).to(DEV)
    w = (torch.randn(1_009, 16, generator=g) * 0.5).to(DEV)
    t = _targets((2, 7), 1_009)
    adv, mask = torch.tensor([1.0, -0.5], device=DEV), torch.ones(2, 7, dtype=torch.bool, device=DEV)
    mask[1, 5:] = False
    old = torch.full((2, 7), -7.0, device=DEV)
    ref = torch.full((2, 7), -6.5, device=DEV)
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    l1, s1 = grpo_loss_torch(h1 @ w1.t(), t, adv, mask, old_logprobs=old, ref_logprobs=ref, temperature=0.8,
                             beta=0.04, aggregation="seq_mean")
    l1.backward()
    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    l2, s2 = grpo_loss_from_hidden(h2, w2, t, adv, mask, old_logprobs=old, ref_logprobs=ref, temperature=0.8,
                                   chunk_tokens=3, beta=0.04, aggregation="seq_mean")
    l2.backward()
    assert abs(l1.item() - l2.item()) <= 1e-5
    for k in s1:
        assert abs(s1[k].item() - s2[k].item()) <= 1e-5, k
    assert (h1.grad - h2.grad).abs().max().item() <= 1e-5
    assert (w1.grad - w2.grad).abs().max().item() <= 1e-5
    lp = token_logprobs_from_hidden(h, w, t, 0.8, chunk_tokens=5)
    assert (lp - token_logprobs_torch(h @ w.t(), t, 0.8)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("aggregation", ["dr_grpo", "token_mean", "seq_mean"])
def test_micro_batch_pieces_with_global_counts_sum_to_the_whole(aggregation):
    g = torch.Generator().manual_seed(7)
    logp = -torch.rand(6, 5, generator=g)
    old = logp + (torch.rand(6, 5, generator=g) - 0.5)
    ref = logp + (torch.rand(6, 5, generator=g) - 0.5)
    adv = torch.randn(6, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    whole, st = policy_loss(logp, adv, mask, old_logprobs=old, ref_logprobs=ref, beta=0.1, aggregation=aggregation,
                            max_tokens=7)
    total, stats = 0.0, {"clip_frac": 0.0, "kl": 0.0, "ratio": 0.0}
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part, s = policy_loss(logp[sl], adv[sl], mask[sl], old_logprobs=old[sl], ref_logprobs=ref[sl], beta=0.1,
                              aggregation=aggregation, max_tokens=7, num_seqs=6, num_tokens=int(mask.sum()))
        total += part.item()
        stats = {k: stats[k] + s[k].item() for k in stats}
    assert total == pytest.approx(whole.item(), rel=1e-5)
    for k in stats:
        assert stats[k] == pytest.approx(st[k].item(), rel=1e-5, abs=1e-7)
