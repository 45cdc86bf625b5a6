import math

import pytest
import torch

from adamame.generate import generate, sample_next
from adamame.model import load_model
from tests.helpers import save_tiny_hf

PROMPTS = [[5, 17, 3, 88, 41, 9, 12], [60], [33, 2, 71, 4], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 50]]


def _models(tmp_path, model_type, **extra):
    hf = save_tiny_hf(tmp_path, model_type, **extra)
    return hf, load_model(str(tmp_path)).eval()


def _hf_greedy(hf, prompts, max_new):
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                      min_new_tokens=max_new, pad_token_id=0, eos_token_id=None)
    return out[:, T:].tolist()


@pytest.mark.parametrize("model_type,extra", [
    ("qwen2", dict(num_attention_heads=6, num_key_value_heads=2)),
    ("qwen3", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    ("llama", dict(num_attention_heads=3, num_key_value_heads=1)),
], ids=["qwen2", "qwen3", "llama"])
def test_greedy_matches_transformers_token_for_token(tmp_path, model_type, extra):
    hf, ours = _models(tmp_path, model_type, **extra)
    want = _hf_greedy(hf, PROMPTS, 12)
    got = generate(ours, PROMPTS, max_new_tokens=12, temperature=0)
    assert [s.tokens for s in got] == want
    assert all(s.finish_reason == "length" for s in got)


def _full_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        z = model(ids)[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(z / temperature, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampler_logprobs_equal_full_forward(tmp_path, temperature):
    _, m = _models(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    samples = generate(m, PROMPTS, max_new_tokens=10, n=3, temperature=temperature, seed=0, return_logprobs=True)
    assert len(samples) == 12
    for i, s in enumerate(samples):
        ref = _full_logprobs(m, PROMPTS[i // 3], s.tokens, temperature)
        assert (torch.tensor(s.logprobs) - ref).abs().max().item() <= 1e-4


def test_early_stop_and_compaction_do_not_change_results(tmp_path):
    _, m = _models(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    free = generate(m, PROMPTS, max_new_tokens=20, n=4, temperature=1.0, seed=3)
    counts = {}
    for s in free:
        for t in s.tokens[:8]:
            counts[t] = counts.get(t, 0) + 1
    eos = sorted(counts, key=counts.get)[-3:]  # frequent tokens, so rows stop at different steps
    a = generate(m, PROMPTS, max_new_tokens=20, n=4, temperature=1.0, seed=3, eos_token_ids=eos, check_every=1,
                 return_logprobs=True)
    b = generate(m, PROMPTS, max_new_tokens=20, n=4, temperature=0.0, eos_token_ids=eos, check_every=10**6)
    c = generate(m, PROMPTS, max_new_tokens=20, n=4, temperature=0.0, eos_token_ids=eos, check_every=1)
    assert [s.tokens for s in b] == [s.tokens for s in c]
    assert any(s.finish_reason == "stop" for s in a) and any(len(s.tokens) < 20 for s in a)
    for i, s in enumerate(a):
        if s.finish_reason == "stop":
            assert s.tokens[-1] in eos and not any(t in eos for t in s.tokens[:-1])
        else:
            assert len(s.tokens) == 20
        ref = _full_logprobs(m, PROMPTS[i // 4], s.tokens, 1.0)
        assert (torch.tensor(s.logprobs) - ref).abs().max().item() <= 1e-4


def test_seed_repeats_and_differs(tmp_path):
    _, m = _models(tmp_path, "llama", num_attention_heads=4, num_key_value_heads=2)
    a = generate(m, PROMPTS, max_new_tokens=8, n=2, seed=1)
    b = generate(m, PROMPTS, max_new_tokens=8, n=2, seed=1)
    c = generate(m, PROMPTS, max_new_tokens=8, n=2, seed=2)
    assert [s.tokens for s in a] == [s.tokens for s in b] != [s.tokens for s in c]


def _peaked(tmp_path):
    """A tiny model whose next-token distributions are far from uniform, so temperature errors show."""
    _, m = _models(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():
        m.lm_head.weight.mul_(25.0)
    return m


def test_top_k_and_top_p_never_leave_the_allowed_set(tmp_path):
    m = _peaked(tmp_path)
    prompt = PROMPTS[0]
    for top_k, top_p in [(5, 1.0), (0, 0.6), (8, 0.8)]:
        samples = generate(m, [prompt], max_new_tokens=4, n=64, temperature=0.9, top_k=top_k, top_p=top_p, seed=0)
        for s in samples:
            ids = torch.tensor([prompt + s.tokens])
            with torch.no_grad():
                z = m(ids)[0, len(prompt) - 1:-1].float() / 0.9
            probs = z.softmax(-1)
            for pos, tok in enumerate(s.tokens):
                p = probs[pos].clone()
                order = p.argsort(descending=True)
                allowed = order[:top_k] if top_k else order
                q = p[allowed] / p[allowed].sum()
                before = q.cumsum(0) - q
                allowed = allowed[before < top_p]
                assert tok in allowed.tolist(), (top_k, top_p, pos)


def _chi2_critical(df, z=3.09):  # Wilson-Hilferty, upper 0.1% point
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts, probs):
    """Pearson statistic with bins of expected count < 5 pooled; returns (statistic, degrees of freedom)."""
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    stat = (((counts[big] - exp[big]) ** 2) / exp[big]).sum()
    rest_c, rest_e = counts[~big].sum(), exp[~big].sum()
    bins = int(big.sum())
    if rest_e > 0:
        stat += (rest_c - rest_e) ** 2 / rest_e
        bins += 1
    return stat.item(), bins - 1


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.3, 0.9)])
def test_empirical_distribution_matches_softmax(tmp_path, temperature, top_p):
    m = _peaked(tmp_path)
    prompt = PROMPTS[2]
    samples = generate(m, [prompt], max_new_tokens=1, n=4000, temperature=temperature, top_p=top_p, seed=0)
    counts = torch.bincount(torch.tensor([s.tokens[0] for s in samples]), minlength=97).double()
    with torch.no_grad():
        z = m(torch.tensor([prompt]))[0, -1].double()

    def target(T, p_top):
        p = (z / T).softmax(-1)
        order = p.argsort(descending=True)
        ps = p[order]
        keep = (ps.cumsum(0) - ps) < p_top
        q = torch.zeros_like(p)
        q[order[keep]] = ps[keep]
        return q / q.sum()

    stat, df = _chi2(counts, target(temperature, top_p))
    assert stat < _chi2_critical(df), (stat, df)
    # the same test rejects a wrong temperature and a missing renormalisation / nucleus cut
    wrong_t, df_t = _chi2(counts, target(temperature * 1.25, top_p))
    assert wrong_t > _chi2_critical(df_t)
    if top_p < 1:
        wrong_p, df_p = _chi2(counts, target(temperature, 1.0))
        assert wrong_p > _chi2_critical(df_p)


def test_shared_prefix_gives_same_distribution_as_independent_copies(tmp_path):
    m = _peaked(tmp_path)
    prompt = PROMPTS[3]
    shared = generate(m, [prompt], max_new_tokens=2, n=2000, temperature=1.0, seed=0)
    copies = generate(m, [prompt] * 2000, max_new_tokens=2, n=1, temperature=1.0, seed=1)
    for pos in (0, 1):
        a = torch.bincount(torch.tensor([s.tokens[pos] for s in shared]), minlength=97).double()
        b = torch.bincount(torch.tensor([s.tokens[pos] for s in copies]), minlength=97).double()
        # two-sample test: each against the pooled frequencies
        pooled = (a + b) / (a + b).sum()
        stat_a, df = _chi2(a, pooled)
        stat_b, _ = _chi2(b, pooled)
        assert stat_a + stat_b < _chi2_critical(2 * df), (pos, stat_a + stat_b, df)


def test_sample_next_greedy_and_logprob():
    z = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tok, lp = sample_next(z, temperature=0)
    assert tok.tolist() == [1, 0]
    assert torch.allclose(lp, torch.log_softmax(z, -1)[[0, 1], [1, 0]])


def test_bad_requests_are_clear_errors(tmp_path):
    _, m = _models(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="at least one"):
        generate(m, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="at least one"):
        generate(m, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        generate(m, [[1, 97]], max_new_tokens=2)
    with pytest.raises(MemoryError, match="KV cache .* needs"):
        generate(m, [[1, 2]], max_new_tokens=10**9)
