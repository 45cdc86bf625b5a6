"""The fused sampler (adamame/sampler.py) under the Triton interpreter: its draws follow softmax(z / T), its tokens and
log-probabilities equal its PyTorch reference's and log softmax(z / T)'s, it loads each logit once, and generate with
it forced keeps its log-probabilities equal to a full forward's."""

import math

import pytest
import torch

from adamame import sampler as S
from adamame.generate import generate
from adamame.hf import load_model
from tests.helpers import save_tiny_hf

pytest.importorskip("triton")


def _keys(R, seed=12345678901):
    return S.seed_tensor(seed, "cpu"), torch.arange(R) * 7 + 3, torch.arange(R) % 5


def _chi2(counts, probs):
    """Pearson's statistic with the bins of expected count < 5 pooled: (statistic, degrees of freedom)."""
    exp = probs * counts.sum()
    big = exp >= 5
    stat = (((counts[big] - exp[big]) ** 2) / exp[big]).sum().item()
    df = int(big.sum()) - 1
    if exp[~big].sum() > 0:
        stat += ((counts[~big].sum() - exp[~big].sum()) ** 2 / exp[~big].sum()).item()
        df += 1
    return stat, df


def _critical(df, z=3.09):  # Wilson-Hilferty: the upper 0.1% point of chi-square with df degrees of freedom
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("greedy", [False, True], ids=["sample", "greedy"])
@pytest.mark.parametrize("splits", [1, 3])
def test_kernel_equals_its_reference_and_log_softmax(dtype, greedy, splits):
    """V = 300 in blocks of 32 (10 blocks, the last one partial), over 1 or 3 programs per row: the kernel's tokens
    are the reference's, and each log-probability is log softmax(z / T) at its token (at T = 1 when greedy)."""
    g = torch.Generator().manual_seed(1)
    R, V, T = 6, 300, 0.8
    z = (torch.randn(R, V, generator=g) * 3).to(dtype)
    z[0, [5, 100, 290]] = z[0].max() + 1  # a tie across blocks (and programs): greedy takes the first maximum
    inv_t = torch.tensor([1 / T])
    seed, sample, index = _keys(R)
    tok, lp = S._launch(z, inv_t, seed, sample, index, greedy, block=32, splits=splits)
    ref_tok, ref_lp = S.sample_torch(z, inv_t, seed, sample, index, greedy, block=32, splits=splits)
    assert torch.equal(tok, ref_tok) and (lp - ref_lp).abs().max() <= 1e-6
    want = torch.log_softmax(z.float() / (1.0 if greedy else T), -1).gather(1, tok[:, None])[:, 0]
    assert (lp - want).abs().max() <= 1e-5  # the logits as stored (bf16: the rounded values) in float32
    if greedy:
        assert torch.equal(tok, z.float().argmax(1)) and tok[0] == 5
    loaded = S.entries_loaded(z, inv_t, seed, sample, index, greedy, block=32, splits=splits)
    assert loaded.tolist() == [V] * R  # each logit loaded once, whatever the splits


@pytest.mark.parametrize("greedy", [False, True], ids=["sample", "greedy"])
def test_the_token_does_not_depend_on_how_many_programs_share_a_row(greedy):
    """A maximum does not depend on how the blocks are grouped: 1, 2, 3 or 10 programs per row (what the row count
    picks on a GPU) give the same tokens, so a sample's token depends on neither its row bucket nor its batch; a block
    whose logits are all -inf (masked) is never chosen and costs nothing."""
    g = torch.Generator().manual_seed(3)
    R, V = 5, 320
    z = torch.randn(R, V, generator=g) * 2
    z[:, 64:96] = float("-inf")  # block 2 of 10, masked
    z[1, :] = float("-inf")
    z[1, 200] = 0.0  # a row with one allowed token
    inv_t = torch.tensor([1.0])
    seed, sample, index = _keys(R)
    outs = [S._launch(z, inv_t, seed, sample, index, greedy, block=32, splits=k) for k in (1, 2, 3, 10)]
    outs.append(S.sample_torch(z, inv_t, seed, sample, index, greedy, block=32, splits=4))
    for tok, lp in outs[1:]:
        assert torch.equal(tok, outs[0][0]) and (lp - outs[0][1]).abs().max() <= 1e-6
    tok, lp = outs[0]
    assert tok[1] == 200 and lp[1].abs() < 1e-6 and not ((tok >= 64) & (tok < 96)).any()
    assert torch.isfinite(lp).all()


def test_the_uniform_numbers_stay_strictly_inside_zero_and_one():
    """The extreme hashes: 0 and 2^32 - 1 map inside (0, 1) (at 1.0 the Gumbel noise -log(-log v) would be +inf and
    its block would win whatever its mass), as the kernel's copy of the formula does."""
    v = S._unit(torch.tensor([0, 2**32 - 1, 2**31], dtype=torch.int64))
    assert 0 < v[0] and v[1] < 1 and torch.isfinite(-torch.log(-torch.log(v))).all()


def test_bf16_log_probabilities_within_bf16_precision_of_the_float32_logits():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 500, generator=g) * 4
    seed, sample, index = _keys(5)
    tok, lp = S._launch(z.bfloat16(), torch.tensor([1.25]), seed, sample, index, False, block=64)
    want = torch.log_softmax(z * 1.25, -1).gather(1, tok[:, None])[:, 0]
    assert (lp - want).abs().max() <= 4 * 1.25 * 4 * 2 ** -8  # |z| up to ~16 rounded to 8 bits, twice (z_y, lse)


@pytest.mark.parametrize("T", [0.6, 1.4])
def test_the_kernels_draws_follow_softmax(T):
    """400 draws of the kernel (V = 8 in two blocks, two programs per row: every level of the draw), keyed by 400
    samples, against softmax(z / T); the reference, which the kernel equals, with 200,000."""
    z = torch.tensor([1.0, -0.5, 2.0, 0.3, -2.0, 1.2, 0.0, 0.8])
    probs = torch.softmax(z / T, -1)
    for draw, R in ((S._launch, 400), (S.sample_torch, 200_000)):
        seed, sample, index = _keys(R, seed=99)
        tok, _ = draw(z.expand(R, 8).contiguous(), torch.tensor([1 / T]), seed, sample, index, False, block=4,
                      splits=2)
        stat, df = _chi2(torch.bincount(tok, minlength=8).float(), probs)
        assert stat < _critical(df), (draw.__name__, stat, df)


def test_generate_with_the_fused_sampler_gives_the_models_logprobs_and_ignores_the_rows(tmp_path, monkeypatch):
    """The sampler forced (the decode step's attention in PyTorch): every token's log-probability equals a full
    forward's log softmax(z / T), and a cache of 2 rows, refilled, draws the same tokens."""
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path)).eval()
    monkeypatch.setenv("ADAMAME_SAMPLER", "triton")
    prompts = [[5, 17, 3], [60], [33, 2, 71, 4]]
    kw = dict(max_new_tokens=6, n=2, temperature=0.7, seed=5, return_logprobs=True, eos_token_ids=[9, 11])
    full = generate(m, prompts, **kw)
    assert [s.tokens for s in generate(m, prompts, max_rows=2, **kw)] == [s.tokens for s in full]
    for i, s in enumerate(full):
        ids = torch.tensor([prompts[i // 2] + s.tokens])
        with torch.no_grad():
            z = m(ids)[0, len(prompts[i // 2]) - 1:-1]
        want = torch.log_softmax(z / 0.7, -1).gather(1, ids[0, len(prompts[i // 2]):, None])[:, 0]
        assert (torch.tensor(s.logprobs) - want).abs().max() <= 1e-5
    monkeypatch.setenv("ADAMAME_SAMPLER", "torch")  # the hatch: the PyTorch sampler, other draws of the same law
    assert [s.tokens for s in generate(m, prompts, **kw)] != [s.tokens for s in full]


@pytest.mark.parametrize("sampler", ["triton", "torch"])
def test_sample_keys_make_a_sample_independent_of_its_place(tmp_path, monkeypatch, sampler):
    """generate's sample_keys, on both samplers (the fused one as the decode step's CUDA graph runs it, and PyTorch's):
    prompts in another order with their keys moved along draw the same samples, refilled or not (evaluate.py's
    resume and any number of ranks rest on it); other keys draw others."""
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path)).eval()
    monkeypatch.setenv("ADAMAME_SAMPLER", sampler)
    prompts, keys = [[5, 17, 3], [60], [33, 2, 71, 4]], [[7, 2**32 - 1], [123456789, 0], [42, 99]]
    kw = dict(max_new_tokens=6, n=2, temperature=0.9, seed=5)
    a = generate(m, prompts, sample_keys=[k for ks in keys for k in ks], **kw)
    order = [2, 0, 1]
    b = generate(m, [prompts[i] for i in order], sample_keys=[k for i in order for k in keys[i]], max_rows=2, **kw)
    assert [b[2 * j + c].tokens for j in range(3) for c in range(2)] == [a[2 * i + c].tokens for i in order
                                                                         for c in range(2)]
    other = generate(m, prompts, sample_keys=[k + 1 for ks in keys for k in ks], **kw)
    assert [s.tokens for s in other] != [s.tokens for s in a]
