"""The Triton decode-attention kernel against references (under the interpreter on CPU), reading a paged cache through
shuffled block tables, the engine with it forced, and the schedule replay's KV-read count against a direct count of
what the engine's decode steps read.

ADAMAME_SWEEP=1 python -m pytest tests/test_decode_attention.py runs the full sweep (every GQA ratio x head_dim x
dtype x length pattern); CI runs a small parametrised set."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

from adamame.decode_attention import (BLOCK_S, blocks_and_slots_read, decode_attention, decode_attention_torch,
                                      num_splits)
from adamame.generate import Decoder, generate, make_decoder, pow2_rows, row_bucket
from adamame.model import PagedKVCache
from bench.schedule import paged_schedule

pytest.importorskip("triton")
SWEEP = os.environ.get("ADAMAME_SWEEP") == "1"
# (rep = query heads per KV head, n_kv, head_dim, slots, rows): few rows and many slots split the key range
CASES = [(1, 4, 64, 700, 5), (4, 2, 128, 600, 4), (6, 2, 128, 200, 6), (8, 1, 64, 1100, 3)]
if SWEEP:
    CASES = [(rep, n_kv, d, s, r) for rep, n_kv, d, (s, r) in
             itertools.product((1, 4, 6, 8), (1, 2), (64, 128), ((700, 5), (200, 40), (4096, 2)))]


def _paged(caches, g, spare=3):
    """Static caches [R, n_kv, S, D] (S a multiple of BLOCK_S) laid out as one pool of blocks in a shuffled order, with
    `spare` blocks no row holds, and everything a row does not hold NaN: ([pools [P, n_kv, D]], table [R, S / BLOCK_S]
    int32)."""
    R, n_kv, S, D = caches[0].shape
    W = S // BLOCK_S
    table = torch.randperm(R * W + spare, generator=g)[:R * W].view(R, W).to(torch.int32)
    s = torch.arange(S)
    at = table.long()[:, s // BLOCK_S] * BLOCK_S + s % BLOCK_S  # [R, S] pool slots
    pools = []
    for c in caches:
        pool = torch.full(((R * W + spare) * BLOCK_S, n_kv, D), float("nan"), dtype=c.dtype)
        pool[at] = c.transpose(1, 2)
        pools.append(pool)
    return pools, table


def _ragged(rows, slots, g):
    """Per-row slot ranges like a rollout's: left padding of various lengths, various current lengths, an empty row
    (finished), a one-slot row and a full one."""
    start = torch.randint(0, slots // 2, (rows,), generator=g)
    end = torch.minimum(start + torch.randint(1, slots, (rows,), generator=g), torch.tensor(slots))
    start[0], end[0] = 0, slots  # the whole cache
    end[1] = start[1]  # nothing (a finished row)
    if rows > 2:
        end[2] = start[2] + 1  # one slot
    return start.to(torch.int32), end.to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rep,n_kv,d,slots,rows", CASES)
def test_kernel_equals_the_reference_and_reads_nothing_outside_each_rows_range(rep, n_kv, d, slots, rows, dtype):
    g = torch.Generator().manual_seed(rep * 1000 + d + slots)
    S = -(-slots // BLOCK_S) * BLOCK_S  # the rows' blocks; the ranges end by `slots`
    q = torch.randn(rows, rep * n_kv, d, generator=g).to(dtype)
    k = torch.randn(rows, n_kv, S, d, generator=g).to(dtype)
    v = torch.randn(rows, n_kv, S, d, generator=g).to(dtype)
    start, end = _ragged(rows, slots, g)
    outside = (torch.arange(S)[None] < start[:, None].long()) | (torch.arange(S)[None] >= end[:, None].long())
    k_nan, v_nan = k.clone(), v.clone()  # what a row must not read is NaN: one load of it would show in the output
    k_nan[outside[:, None, :, None].expand_as(k)] = float("nan")
    v_nan[outside[:, None, :, None].expand_as(v)] = float("nan")
    (kp, vp), table = _paged([k_nan, v_nan], g)  # blocks shuffled, unheld blocks NaN too
    got = decode_attention(q, kp, vp, table, start, end, d ** -0.5)
    (kf, vf), tf = _paged([k.float(), v.float()], torch.Generator().manual_seed(1))
    want = decode_attention_torch(q.float(), kf, vf, tf, start, end)  # fp32 reference, another block order
    assert got.dtype == dtype and torch.isfinite(got).all()
    tol = 2e-6 if dtype == torch.float32 else 2e-2
    assert (got.float() - want).abs().max() <= tol
    assert (got[1] == 0).all()  # an empty range reads nothing and gives zeros
    # what the kernel visits: per row exactly the blocks its range touches in each split, and its slots once
    splits = num_splits(rows, n_kv, S)
    split_len = -(-S // (splits * BLOCK_S)) * BLOCK_S

    def touched(lo, hi):
        return -(-hi // BLOCK_S) - lo // BLOCK_S if hi > lo else 0

    blocks = [sum(touched(max(int(b), j * split_len), min(int(e), (j + 1) * split_len)) for j in range(splits))
              for b, e in zip(start, end)]
    counts = blocks_and_slots_read(q, kp, vp, table, start, end)
    assert counts[:, 0].tolist() == [n_kv * b for b in blocks]
    assert counts[:, 1].tolist() == (n_kv * (end - start)).tolist()
    if SWEEP:
        print(f"rep {rep} n_kv {n_kv} d {d} slots {slots} rows {rows} {dtype}: splits "
              f"{num_splits(rows, n_kv, slots)}, max |diff| {(got.float() - want).abs().max():.2e}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rep,n_kv,d,width", [(3, 2, 32, 6), (4, 2, 64, 6), (1, 4, 32, 18), (6, 2, 128, 4)])
def test_the_cascade_reads_each_shared_prompt_once_and_equals_the_reference(rep, n_kv, d, width, dtype):
    """Rows that share a prompt's blocks (a group's samples; prompts of 40, 3 and 70 tokens, each placed to end on a
    block boundary), with own tokens after it: the cascade (one prompt read per lead row, members/pend) equals the
    reference; a listed row that is inactive, a group of one row, a group of ten rows (several lead rows: at most
    group_rows(rep) rows a read), and with width 18 a split key range. Every slot no row may read is NaN."""
    from adamame.paging import GROUP, group_rows

    g = torch.Generator().manual_seed(rep * 100 + d)
    plens, rows_g = [40, 3, 70], [0, 0, 0, 1, 2, 2] + [0] * 7  # group 0: rows 0-2 and 6-12 (10 rows)
    R, blocks = len(rows_g), 120
    k = torch.full((blocks * BLOCK_S, n_kv, d), float("nan"))
    v = torch.full((blocks * BLOCK_S, n_kv, d), float("nan"))
    free = iter((torch.randperm(blocks - 1, generator=g) + 1).tolist())
    prompt = [[next(free) for _ in range((-p % BLOCK_S + p) // BLOCK_S)] for p in plens]
    table = torch.zeros(R, width, dtype=torch.int32)
    start, pend, end = (torch.zeros(R, dtype=torch.int32) for _ in range(3))
    for r, grp in enumerate(rows_g):
        own = int(torch.randint(1, 60, (), generator=g))
        mine = [next(free) for _ in range(-(-own // BLOCK_S))]
        table[r, :len(prompt[grp]) + len(mine)] = torch.tensor(prompt[grp] + mine)
        start[r], pend[r] = -plens[grp] % BLOCK_S, -plens[grp] % BLOCK_S + plens[grp]
        end[r] = pend[r] + own
        at = table[r].long()[torch.arange(int(start[r]), int(end[r])) // BLOCK_S] * BLOCK_S + \
            torch.arange(int(start[r]), int(end[r])) % BLOCK_S
        k[at], v[at] = torch.randn(len(at), n_kv, d, generator=g), torch.randn(len(at), n_kv, d, generator=g)
    end[5] = 0  # finished: it reads nothing, and group 2's prompt is read for row 4 alone
    members = torch.full((R, GROUP), -1, dtype=torch.int32)
    group0, per = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12], group_rows(rep)
    for i in range(0, len(group0), per):  # the lead row of each chunk lists the chunk
        members[group0[i], :len(group0[i:i + per])] = torch.tensor(group0[i:i + per], dtype=torch.int32)
    members[3, 0], members[4, :2] = 3, torch.tensor([4, 5], dtype=torch.int32)
    q = torch.randn(R, n_kv * rep, d, generator=g)
    got = decode_attention(q.to(dtype), k.to(dtype), v.to(dtype), table, start, end, d ** -0.5, members, pend)
    want = decode_attention_torch(q, k.nan_to_num(), v.nan_to_num(), table, start, end, d ** -0.5)
    assert torch.isfinite(got).all() and (got[5] == 0).all()
    assert (got.float() - want).abs().max() <= (2e-6 if dtype == torch.float32 else 2e-2)
    assert (width > 6) == (num_splits(R, n_kv, width * BLOCK_S) > 1)


def test_the_reference_equals_sdpa_with_a_mask():
    """The reference itself, against torch's SDPA with a boolean mask and GQA (an independent implementation)."""
    g = torch.Generator().manual_seed(0)
    rows, n_kv, rep, slots, d = 4, 2, 3, 64, 32
    q, k, v = (torch.randn(*s, generator=g) for s in ((rows, n_kv * rep, d), (rows, n_kv, slots, d),
                                                        (rows, n_kv, slots, d)))
    start, end = torch.tensor([0, 5, 20, 49], dtype=torch.int32), torch.tensor([50, 6, 40, 64], dtype=torch.int32)
    keep = (torch.arange(slots)[None] >= start[:, None]) & (torch.arange(slots)[None] < end[:, None])
    want = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=keep[:, None, None], enable_gqa=True)[:, :, 0]
    (kp, vp), table = _paged([k, v], g)
    assert (decode_attention_torch(q, kp, vp, table, start, end) - want).abs().max() < 1e-6


def test_splits_depend_only_on_the_bucket():
    assert num_splits(512, 2, 4608) == 1  # many rows fill the GPU: one program per (row, kv head)
    assert num_splits(2, 2, 4608) == 18  # a rollout's tail: the key range is split (>= 256 slots each)
    assert num_splits(2, 2, 200) == 1


def _tiny(tmp_path):
    from tests.helpers import save_tiny_hf

    from adamame.hf import load_model

    save_tiny_hf(tmp_path / "m", "qwen2", num_attention_heads=8, num_key_value_heads=2, hidden_size=64,
                 vocab_size=300)
    return load_model(str(tmp_path / "m"))


PROMPTS = [[5, 6, 7], list(range(20, 45)), [9], list(range(50, 60)), [11, 12]]


@pytest.mark.parametrize("rows", [3, 8])
def test_with_the_kernel_a_small_refilled_cache_draws_the_samples_of_a_full_one(tmp_path, monkeypatch, rows):
    """The kernel forced (under the interpreter): a cache of 3 or 8 rows, whose finished rows take waiting samples,
    gives the tokens of one row per sample, and log-probs within 1e-5 (fp32)."""
    model = _tiny(tmp_path)
    monkeypatch.setenv("ADAMAME_KERNELS", "triton")
    kw = dict(max_new_tokens=24, n=3, seed=7, eos_token_ids=list(range(100, 130)), return_logprobs=True,
              check_every=2)
    full, stats = generate(model, PROMPTS, **kw), {}
    small = generate(model, PROMPTS, max_rows=rows, stats=stats, **kw)
    assert stats["most_rows"] < 3 * len(PROMPTS) and len({len(s.tokens) for s in full}) > 3
    assert [s.tokens for s in small] == [s.tokens for s in full]
    assert max(abs(a - b) for s, t in zip(small, full) for a, b in zip(s.logprobs, t.logprobs)) < 1e-5


@pytest.mark.parametrize("pad_rows", [False, True], ids=["live-rows", "padded-buckets"])
def test_the_engine_samples_the_same_tokens_with_the_kernel(tmp_path, monkeypatch, pad_rows):
    """generate (n = 3, stop tokens, rows dropped) with the Triton decode kernel forced under the interpreter against the
    SDPA path: the same uniforms give the same tokens in fp32, and the log-probs agree. padded-buckets runs the rows
    of a CUDA-graph bucket (padding rows with stale positions, finished rows inactive) as a GPU does."""
    model = _tiny(tmp_path)
    kw = dict(max_new_tokens=24, n=3, seed=3, eos_token_ids=list(range(100, 130)), return_logprobs=True,
              check_every=4)
    monkeypatch.setenv("ADAMAME_SAMPLER", "torch")  # like with like: the attention paths, one sampler
    monkeypatch.setenv("ADAMAME_KERNELS", "torch")
    want = generate(model, PROMPTS, **kw)
    monkeypatch.setenv("ADAMAME_KERNELS", "triton")
    calls = []
    real = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda *a, **k: calls.append((a[4], int(k["active"][:a[4]].sum())))
                        or real(*a, **k))
    if pad_rows:
        cache = make_decoder(model, len(PROMPTS) * 3, max(map(len, PROMPTS)), 24).cache
        kw["decoder"] = Decoder(model, cache, cuda_graphs=False, slot_bucket=16, pad_rows=True)
    got = generate(model, PROMPTS, **kw)
    assert len(calls) > 10 and len({len(s.tokens) for s in want}) > 3  # rows stop at different steps
    if pad_rows:
        assert any(active < rows for rows, active in calls)  # steps with padding or finished rows in the bucket
    assert [s.tokens for s in got] == [s.tokens for s in want]
    assert max(abs(a - b) for s, t in zip(got, want) for a, b in zip(s.logprobs, t.logprobs)) < 1e-5


def test_the_decode_step_with_the_kernel_is_one_op_and_syncs_nothing(tmp_path, monkeypatch):
    """On the meta device with the kernel path on: the recorder sees adamame::decode_attention (its fake
    implementation gives the shapes) once per layer, no host sync, nothing on another device."""
    from tests.test_gpu_contracts import OpRecorder, _devices, _step_setup

    monkeypatch.setenv("ADAMAME_KERNELS", "triton")
    cfg = _tiny(tmp_path).config
    from adamame.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
        cache, tokens, positions = _step_setup(model)
        slot, active = torch.full((5,), 6), torch.ones(5, dtype=torch.bool)
    rec = OpRecorder()
    with rec, torch.no_grad():
        logits = model.decode_step(tokens, positions, cache, slot, 5, 32, active=active)
    names = [op[0] for op in rec.ops]
    assert names.count("adamame.decode_attention") == cfg.num_hidden_layers
    assert "aten._scaled_dot_product_efficient_attention" not in names and "aten.masked_fill_" not in names
    assert logits.shape == (5, cfg.vocab_size) and rec.syncs == [] and _devices([op[3] for op in rec.ops]) == {"meta"}


@pytest.mark.parametrize("rows", [None, 4], ids=["row-per-sample", "small-cache"])
@pytest.mark.parametrize("pad_rows", [False, True])
def test_the_kv_read_counter_equals_a_direct_count_of_the_engines_steps(tmp_path, monkeypatch, pad_rows, rows):
    """paged_schedule replays generate's schedule from the prompt and response lengths alone; a direct count of the
    decode steps generate really runs (their rows, slots, active rows and positions) must give the same numbers, for
    SDPA (rows x slots) and for the kernel (each active row's own slots), with and without padded row buckets, with a
    cache for every sample and one the size of 4 full rows. Every slot an active row reads lies in a block the row
    holds (not the scratch block)."""
    model = _tiny(tmp_path)
    prompts = [list(range(1, 1 + L)) for L in (3, 40, 7, 1, 22, 9, 15, 2, 30)]
    n, new = 8, 40
    seen = {"steps": 0, "sdpa": 0, "kernel": 0, "rows_run": 0, "rows_active": 0, "buckets": set()}
    real = model.decode_step

    def counting(tokens, positions, cache, slot, rows, slots, *, active=None, groups=None):
        act = active[:rows]
        seen["steps"] += 1
        seen["sdpa"] += rows * slots
        last = slot[:rows][act]
        first = last - positions[:rows][act]  # the kernel's range: [slot - position, slot]
        for r, (a, b) in zip(torch.nonzero(act)[:, 0].tolist(), zip(first.tolist(), last.tolist())):
            held = cache.table[r, a // BLOCK_S:b // BLOCK_S + 1]
            assert (held > 0).all(), (r, a, b)
        members, pend = (t[:rows] for t in groups)  # the cascade: own slots, and a group's prompt once
        lead = {m: r for r in range(rows) for m in members[r].tolist() if m >= 0}
        listed = [m for r in range(rows) for m in members[r].tolist() if m >= 0]
        assert len(listed) == len(lead) and set(torch.nonzero(act)[:, 0].tolist()) <= set(lead)  # one lead a row
        seen["kernel"] += int((last + 1 - pend[act]).sum())
        seen["kernel"] += sum(int(pend[r] - (slot[r] - positions[r])) for r in {lead[i] for i in
                                                                                 torch.nonzero(act)[:, 0].tolist()})
        seen["rows_run"] += rows
        seen["rows_active"] += int(act.sum())
        seen["buckets"].add((rows, slots))
        return real(tokens, positions, cache, slot, rows, slots, active=active)

    monkeypatch.setattr(model, "decode_step", counting)
    N = len(prompts) * n
    blocks = None if rows is None else rows * (64 + 64) // BLOCK_S + 1  # cache_slots(40, 40) = 128
    dec = Decoder(model, make_decoder(model, N, 40, new, blocks=blocks).cache, cuda_graphs=False, slot_bucket=16,
                  pad_rows=pad_rows)
    stats = {}
    out = generate(model, prompts, max_new_tokens=new, n=n, seed=1, eos_token_ids=list(range(100, 112)),
                   check_every=4, decoder=dec, stats=stats)
    lens = [len(s.tokens) for s in out]
    assert min(lens) < 10 and max(lens) == new  # rows stop early and late
    plens = [len(p) for p in prompts for _ in range(n)]
    kw = dict(blocks=dec.cache.k[0].shape[0] // BLOCK_S, n=n, check_every=4, slot_bucket=16, pad_rows=pad_rows)
    sdpa, kernel = paged_schedule(plens, lens, new, kernel=False, **kw), paged_schedule(plens, lens, new, **kw)
    assert (sdpa["steps"], sdpa["read"], kernel["read"]) == (seen["steps"], seen["sdpa"], seen["kernel"])
    assert (sdpa["rows_run"], sdpa["rows_active"], sdpa["graphs"]) == (seen["rows_run"], seen["rows_active"],
                                                                      len(seen["buckets"]))
    assert (kernel["preemptions"], kernel["most_rows"]) == (stats["preemptions"], stats["most_rows"])
    assert kernel["read"] < sdpa["read"] and sdpa["useful"] == kernel["useful"] == seen["kernel"]
    assert (stats["most_rows"] == N) == (rows is None)


def test_a_decode_step_without_active_rows_equals_sdpa(tmp_path, monkeypatch):
    """decode_step called directly (active=None, every row reads its range), kernel forced vs SDPA, rows' blocks
    shuffled in the pool."""
    model = _tiny(tmp_path)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    cache = PagedKVCache.allocate(cfg, 6 * 2 + 1, 6, 2, torch.float32, "cpu")
    for buf in cache.k + cache.v:
        buf.normal_(generator=g)
    cache.table.copy_(torch.randperm(12, generator=g).view(6, 2) + 1)
    plen = torch.tensor([3, 10, 1, 7, 10, 5])
    tokens, slot = torch.randint(0, 300, (6,), generator=g), torch.full((6,), 40)
    out = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("ADAMAME_KERNELS", mode)
        with torch.no_grad():
            out[mode] = model.decode_step(tokens, plen.clone() + 30, cache, slot, 6, 64)
    assert (out["torch"] - out["triton"]).abs().max() < 1e-5


def test_inputs_the_kernel_would_misread_are_refused():
    """The kernel steps head_dim by 1 and reads start/end as contiguous int32: anything else is refused before a launch
    (on a GPU it would read the wrong elements silently), and what the decode step passes it is accepted."""
    q, k, v = torch.zeros(2, 4, 32), torch.zeros(96, 2, 32), torch.zeros(96, 2, 32)
    table = torch.tensor([[1], [2]], dtype=torch.int32)
    start, end = torch.zeros(2, dtype=torch.int32), torch.full((2,), 16, dtype=torch.int32)
    strided = torch.zeros(96, 32, 2).transpose(-1, -2)  # [96, 2, 32] with last stride 2
    for bad in (dict(q=torch.zeros(2, 32, 4).transpose(-1, -2)), dict(k=strided), dict(v=strided)):
        args = {"q": q, "k": k, "v": v, **bad}
        with pytest.raises(ValueError, match="unit stride in their last dimension"):
            decode_attention(args["q"], args["k"], args["v"], table, start, end, 32 ** -0.5)
    for s, e in ((start.long(), end), (start, torch.zeros(4, dtype=torch.int32)[::2])):
        with pytest.raises(ValueError, match="contiguous int32"):
            decode_attention(q, k, v, table, s, e, 32 ** -0.5)
    for t in (table.long(), torch.tensor([[1, 2], [2, 1]], dtype=torch.int32).t()[:, :1]):
        with pytest.raises(ValueError, match="block table"):
            decode_attention(q, k, v, t, start, end, 32 ** -0.5)
    assert decode_attention(q, k, v, table, start, end, 32 ** -0.5).shape == (2, 4, 32)


def test_row_buckets():
    assert [row_bucket(n) for n in (1, 3, 33, 64, 65, 300, 512)] == [1, 4, 64, 64, 128, 320, 512]
    assert pow2_rows(300) == 512
    assert len({row_bucket(n) for n in range(1, 513)}) == 7 + 7  # 1 .. 64, then 128 .. 512
