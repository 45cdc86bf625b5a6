import math

import pytest
import torch

from adamame import paging
from adamame.generate import Decoder, generate, make_decoder, sample_next
from adamame.model import KVCache
from adamame.hf import load_model
from tests.helpers import paged_copy, save_tiny_hf

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
    # compaction in place (check_every=1) changes no sample of a seeded run: never compacting gives the same
    never = generate(m, PROMPTS, max_new_tokens=20, n=4, temperature=1.0, seed=3, eos_token_ids=eos,
                     check_every=10**6, return_logprobs=True)
    assert [s.tokens for s in a] == [s.tokens for s in never]
    assert max(abs(x - y) for s, t in zip(a, never) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-6
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
    with pytest.raises(MemoryError, match="slots needs .* GiB, .* GiB free"):
        generate(m, [[1, 2]], max_new_tokens=10**9)


def _prefilled(m, prompts, S, seed):
    """A paged cache (its blocks in a shuffled order) with the prompts left-padded into slots [0, Tp), and the
    logits of their last tokens."""
    Tp = max(map(len, prompts))
    ids = torch.zeros(len(prompts), Tp, dtype=torch.long)
    mask = torch.zeros(len(prompts), Tp, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, Tp - len(p):], mask[i, Tp - len(p):] = torch.tensor(p), True
    cache = KVCache.allocate(m.config, len(prompts), S, torch.float32, "cpu")
    pos = (mask.sum(-1, keepdim=True) - Tp + torch.arange(Tp)).clamp(min=0)
    with torch.no_grad():
        m(ids, positions=pos, mask=mask, cache=cache)
    return paged_copy(cache, seed), Tp, mask.sum(-1)


def test_bucketed_decode_equals_full_cache_attention_across_buckets_and_dropped_rows(tmp_path):
    _, m = _models(tmp_path, "qwen2", num_attention_heads=6, num_key_value_heads=2)
    prompts = PROMPTS + [[9, 8, 7], [1, 2, 3, 4, 5, 6]]  # 6 rows of lengths 7, 1, 4, 11, 3, 6
    S = 64
    full, Tp, plen = _prefilled(m, prompts, S, seed=0)
    bucketed, _, _ = _prefilled(m, prompts, S, seed=1)  # the same rows in another block order
    ref = Decoder(m, full, cuda_graphs=False, slot_bucket=S)  # attends to every slot, rows not padded
    ours = Decoder(m, bucketed, cuda_graphs=False, slot_bucket=4, pad_rows=True)  # 4-slot buckets, rows padded
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 97, (6,), generator=g)
    rows = torch.arange(6)
    seen_buckets = set()
    with torch.no_grad():
        for t in range(30):
            if t == 6:  # drop rows 1, 3 and 4 (as finished rows are dropped): their table rows go, the others move up
                keep = torch.tensor([0, 2, 5])
                for c in (full, bucketed):
                    c.table[:3] = c.table[keep].clone()
                    c.table[3:] = 0
                rows, tok = rows[keep], tok[keep]
            seen_buckets.add(ours.buckets(len(rows), Tp + t))
            slot = torch.full((len(rows),), Tp + t)
            a = ref(tok, plen[rows] + t, slot, Tp + t).clone()
            b = ours(tok, plen[rows] + t, slot, Tp + t)
            assert (a - b).abs().max().item() <= 1e-5, t
            tok = torch.randint(0, 97, (len(rows),), generator=g)
    # the test crossed slot buckets (12, 16, ..., 44: past the first block) and row buckets (all 6 rows, then the
    # 3 kept rows padded to 4 with a padding row that must not disturb them)
    assert {s for _, s in seen_buckets} == set(range(12, 48, 4)) and {r for r, _ in seen_buckets} == {6, 4}


def test_samples_do_not_depend_on_buckets(tmp_path):
    _, m = _models(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    eos = [3, 17, 41]  # frequent enough that rows stop at different steps, so compaction happens
    kw = dict(max_new_tokens=20, n=3, temperature=1.0, seed=5, eos_token_ids=eos, check_every=2, return_logprobs=True)
    a = generate(m, PROMPTS, slot_bucket=4, **kw)
    b = generate(m, PROMPTS, slot_bucket=10**6, **kw)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert any(s.finish_reason == "stop" for s in a)
    for x, y in zip(a, b):
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)


@pytest.mark.parametrize("rows", [3, 8])
def test_a_small_refilled_cache_draws_the_samples_of_a_full_one(tmp_path, rows):
    """Sample s's token i comes from keyed_uniforms(seed, s, i): a cache of 3 or 8 rows, whose finished rows take
    waiting samples (and whose rows are dropped once none wait), gives the tokens of a cache with one row per sample,
    and their log-probs within 1e-5 (fp32, SDPA)."""
    _, m = _models(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    kw = dict(max_new_tokens=20, n=4, temperature=1.0, seed=11, eos_token_ids=[3, 17, 41, 5, 9], check_every=2,
              return_logprobs=True)
    full, stats = generate(m, PROMPTS, **kw), {}
    small = generate(m, PROMPTS, max_rows=rows, stats=stats, **kw)
    assert stats["most_rows"] < 16 and stats["steps"] > 20 and len({len(s.tokens) for s in full}) > 3
    assert [s.tokens for s in small] == [s.tokens for s in full]
    assert max(abs(x - y) for s, t in zip(small, full) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-5
    for i, s in enumerate(small):  # and each is a sample of its own prompt: the log-probs of a full forward
        assert (torch.tensor(s.logprobs) - _full_logprobs(m, PROMPTS[i // 4], s.tokens, 1.0)).abs().max() <= 1e-4


@pytest.mark.parametrize("reserve", [None, 1], ids=["reserve-2048", "reserve-1"])
def test_forced_lengths_run_the_schedule_paged_schedule_replays(tmp_path, monkeypatch, reserve):
    """Padded row buckets (as CUDA graphs run them), caches from a handful of blocks to one row per sample, forced
    response lengths, among them samples that end at their first token (rows that are done at once), and with a
    1-token reserve the preemptions a small cache forces: generate runs exactly the decode steps, preemptions,
    recomputed tokens and prefills that bench/schedule.py's paged_schedule replays, and each sample has its length."""
    from bench.schedule import paged_schedule

    monkeypatch.setattr(paging, "RESERVE", reserve or paging.RESERVE)
    _, m = _models(tmp_path, "qwen3", num_attention_heads=6, num_key_value_heads=2)
    prompts = [[1, 2, 3, 4], list(range(5, 40)), [7]]
    preempted = 0
    for resp, blocks, every in (([15, 11, 36, 36, 5, 33, 11, 2, 11, 34, 27, 39], 9, 2), ([1] * 6, 4, 4),
                                ([3, 3, 1, 1, 1, 40, 1, 2, 9], 8, 4), ([40] * 6 + [20] * 6, 100, 8)):
        n = len(resp) // 3
        dec = Decoder(m, make_decoder(m, len(resp), 35, 40, blocks=blocks).cache, cuda_graphs=False, slot_bucket=16,
                      pad_rows=True)
        stats = {}
        out = generate(m, prompts, n=n, max_new_tokens=40, seed=0, check_every=every, decoder=dec,
                       response_lengths=resp, stats=stats)
        assert [len(s.tokens) for s in out] == resp and {s.finish_reason for s in out} == {"length"}
        replay = paged_schedule([len(p) for p in prompts for _ in range(n)], resp, 40, n=n, blocks=blocks,
                                check_every=every, slot_bucket=16, forced=True)
        got = (stats["steps"], stats["preemptions"], stats["recomputed_tokens"], stats["prompt_prefills"],
               stats["prefill_tokens"], stats["most_rows"])
        assert got == (replay["steps"], replay["preemptions"], replay["recomputed"], replay["prefills"],
                       replay["prefill_tokens"], replay["most_rows"]), resp
        preempted += stats["preemptions"]
    assert (preempted > 0) == (reserve == 1)
    with pytest.raises(ValueError, match="one positive length per sample"):
        generate(m, [[1, 2]], max_new_tokens=4, n=2, response_lengths=[3])


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_preemption_loses_and_changes_nothing(tmp_path, monkeypatch, kernels):
    """A cache of a handful of blocks and a 1-token reserve (rows admitted greedily, then preempted when a running
    row needs a block and none is free, and re-admitted with their tokens recomputed) draws the same tokens, and
    log-probs within 1e-5 in fp32, as a cache with a row for every sample: on the SDPA path and with the Triton
    kernels (under the interpreter). With 64 new tokens (SDPA), rows reach the last slot a row can address while
    re-admitted samples of their group still run: every row a lead row reads a prompt for keeps that prompt's
    start (slot - position) at every step, as the cascade needs."""
    _, m = _models(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    prompts = [[5, 17, 3, 88, 41, 9, 12] * 3, [60], [7] * 25]
    kw = dict(max_new_tokens=64 if kernels == "torch" else 40, n=3, temperature=1.0, seed=11, eos_token_ids=[3],
              check_every=5 if kernels == "torch" else 4, return_logprobs=True)
    monkeypatch.setenv("ADAMAME_KERNELS", kernels)
    full = generate(m, prompts, **kw)
    monkeypatch.setattr(paging, "RESERVE", 1)
    real, checked = m.decode_step, []

    def same_start(tokens, positions, cache, slot, rows, slots, *, active=None, groups=None):
        members, start = groups[0][:rows], slot[:rows] - positions[:rows]
        for r in range(rows):
            listed = [i for i in members[r].tolist() if i >= 0]
            assert len({int(start[i]) for i in listed}) <= 1, (r, listed, start[listed])
            checked.append(len(listed) > 1 and bool((slot[listed] == cache.table.shape[1] * 32 - 1).any()))
        return real(tokens, positions, cache, slot, rows, slots, active=active, groups=groups)

    monkeypatch.setattr(m, "decode_step", same_start)
    for blocks in (8, 10) if kernels == "torch" else (5,):
        stats = {}
        small = generate(m, prompts, cache_blocks=blocks, stats=stats, **kw)
        assert stats["preemptions"] >= 1 and stats["recomputed_tokens"] > 0, stats
        assert [s.tokens for s in small] == [s.tokens for s in full]
        assert max(abs(x - y) for s, t in zip(small, full) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-5
    assert len({len(s.tokens) for s in full}) > 1  # rows end at different steps
    assert kernels != "torch" or any(checked)  # a listed row sat at the last slot beside others (it fails if the
    # last slot stopped the slot but not the position: the row's start would drift)
    with pytest.raises(MemoryError, match="cannot hold one sample"):
        generate(m, prompts, cache_blocks=3, **kw)


def test_each_distinct_prompt_is_prefilled_once_per_call(tmp_path, monkeypatch):
    """n = 4 samples of 5 prompts in a cache too small to admit all samples at once (a group's samples are admitted at
    different looks): the model's forwards see each prompt's tokens once (counted on the forward's mask), and the
    samples are those of a cache with a row for every sample."""
    _, m = _models(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    prompts = PROMPTS + [[9, 8, 7, 6, 5]]
    kw = dict(max_new_tokens=30, n=4, temperature=1.0, seed=2, eos_token_ids=[3, 17, 41], check_every=2)
    full = generate(m, prompts, **kw)
    seen = []
    real = m.forward
    monkeypatch.setattr(m, "forward", lambda ids, *a, **k: seen.append(k["mask"][k["mask"]].numel()) or
                        real(ids, *a, **k))
    stats = {}
    small = generate(m, prompts, max_rows=3, stats=stats, **kw)
    assert sum(seen) == stats["prefill_tokens"] == sum(map(len, prompts)) and stats["prompt_prefills"] == 5
    assert len(seen) > 1 and stats["most_rows"] < 20  # admitted over several looks
    assert [s.tokens for s in small] == [s.tokens for s in full]


def test_keyed_uniforms_are_uniform_and_keyed():
    from adamame.generate import keyed_uniforms

    s, i = torch.arange(400).repeat_interleave(250), torch.arange(250).repeat(400)
    u = keyed_uniforms(12345, s, i)
    assert u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
    counts = torch.histc(u.float(), bins=20, min=0, max=1)
    stat, df = _chi2(counts, torch.full((20,), 0.05))
    assert df == 19 and stat < _chi2_critical(df)
    assert torch.equal(keyed_uniforms(12345, s[::7], i[::7]), u[::7])  # a pair's number, whatever the batch
    assert (keyed_uniforms(12346, s, i) != u).float().mean() > 0.999  # another seed, other numbers
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.01  # consecutive indices uncorrelated


def test_merged_bf16_rollout_copy_gives_the_lora_models_greedy_tokens(tmp_path):
    from adamame.dist import rollout_copy
    from adamame.lora import adapters_disabled, apply_lora

    _, m = _models(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    apply_lora(m, 4, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)  # a trained adapter that changes the outputs
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(128)]
    lora = generate(m, prompts, max_new_tokens=4, temperature=0)
    with adapters_disabled(m):
        base = generate(m, prompts, max_new_tokens=4, temperature=0)
    assert sum(a.tokens != b.tokens for a, b in zip(lora, base)) >= 32  # the adapter matters: merging is tested
    exact = rollout_copy(m, torch.float32)  # merged in float32: the adapter model's function
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        assert (exact(ids) - m(ids)).abs().max().item() <= 1e-5
    copy = rollout_copy(m, torch.bfloat16)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert not any(n.endswith(("lora_A", "lora_B")) for n, _ in copy.named_parameters())
    got = generate(copy, prompts, max_new_tokens=4, temperature=0)
    # bf16 rounds the logits by up to ~0.02 here; wherever the float32 LoRA model's greedy choice wins by 0.05 or
    # more at every step, the bf16 copy must pick the same tokens
    clear = 0
    for p, want, have in zip(prompts, lora, got):
        with torch.no_grad():
            top2 = m(torch.tensor([p + want.tokens]))[0, len(p) - 1:-1].topk(2, -1).values
        if (top2[:, 0] - top2[:, 1]).min().item() >= 0.05:
            clear += 1
            assert have.tokens == want.tokens, p
    assert clear >= 8
    assert sum(a.tokens == b.tokens for a, b in zip(lora, got)) >= 0.8 * len(prompts)


def test_a_decoder_reused_across_calls_gives_the_samples_of_fresh_ones(tmp_path):
    """A rollout's chunks share one cache (and on a GPU one set of graphs): stale rows and slots of the first call
    must not leak into the second."""
    _, m = _models(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    dec = make_decoder(m, rows=6, prompt_len=11, max_new_tokens=12)
    kw = dict(max_new_tokens=12, n=3, temperature=1.0, return_logprobs=True, eos_token_ids=[5, 9], check_every=2)
    shared = generate(m, PROMPTS[3:], seed=1, decoder=dec, **kw) + generate(m, PROMPTS[:2], seed=2, decoder=dec, **kw)
    fresh = generate(m, PROMPTS[3:], seed=1, **kw) + generate(m, PROMPTS[:2], seed=2, **kw)
    assert [s.tokens for s in shared] == [s.tokens for s in fresh]
    assert max(abs(x - y) for s, t in zip(shared, fresh) for x, y in zip(s.logprobs, t.logprobs)) <= 1e-6
    with pytest.raises(ValueError, match="this call needs"):
        generate(m, PROMPTS, n=3, decoder=dec, max_new_tokens=40)
