"""Decode attention that reads only what it uses: one query token per row against a paged KV cache, in Triton.

Why: at the paper's rollout shape (a 4B model, ~150 rows in flight, up to 4,608 slots a row) a decode step reads ~8 GB
of weights and tens of GB of KV cache, so the rollout is bound by KV reads. SDPA with an additive bias reads every
slot of the step's bucket for every row: the bucket's slack past a row's length, and the rows that have already
finished. This kernel reads, for each row, only its logical slots [start, end) (its prompt's first token to its
current length; end = 0 for a finished or padding row, which reads nothing), through its block table (row r's
logical slot s lives at pool slot table[r, s // BLOCK_S] * BLOCK_S + s % BLOCK_S: a paged cache, adamame/paging.py):

    grid = (rows, kv heads, splits); a program loads the rep = n_heads / n_kv query heads that share its KV head
    as one [rep, D] block (K and V are read once for all of them), walks its share of [start, end) in blocks of
    BLOCK_S slots (one cache block each, its id read from the table) with an online softmax (running max m, sum l,
    accumulator acc, all float32); with one split it writes the answer acc / l in q's dtype, with several
    (FlashDecoding's split-KV: when rows x kv heads are too few to fill the GPU, at a rollout's tail) it writes the
    unnormalised (acc, m, l) and a second kernel combines them,
        out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s,   M = max_s m_s.

Cascade (FlashInfer's name): the samples of one prompt share its blocks, so a first kernel reads each shared prompt
once for all its rows, their queries stacked as one [rows x rep, D] block (a group of up to GROUP rows; members and
pend say who and where the prompt ends), and leaves each row's unnormalised (acc, m, l) over the prompt; the main
kernel starts from it and reads only the row's own slots [pend, end). The prompt is read once a group, not once a
row. Nothing else runs in PyTorch: the op is one to three kernel launches (what the decode step's kernel count,
bench/kernel_count.py, holds it to).

The number of splits depends only on (rows, slots), so a captured CUDA graph replays it at every step of a bucket;
start and end live in device tensors. It is registered as the op `adamame::decode_attention` (torch.library), so
op recorders and the meta device see one op. `decode_attention_torch` is the same computation in plain PyTorch, the
reference the tests compare with, and what the op computes where the kernel cannot run. `use_kernel` is the decode
step's switch (ADAMAME_KERNELS; without the kernel adamame/model.py attends with SDPA and a bias).
Under the Triton interpreter (CPU tests) bfloat16 operands are cast to float32 before `tl.dot` (the interpreter
mishandles bfloat16 dots); on a GPU the dots take bfloat16 and accumulate in float32.

Imports: torch, triton (optional).
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BLOCK_S = 32  # cache slots per inner block
PREFIX_QUERIES = 32  # _prefix_kernel: query heads a program holds ([rows x rep, D] and its float32 state) ...
PREFIX_WARPS = 16  # ... on 16 warps: <= 128 registers a thread, no spills (tests/test_gpu_contracts.py)
NUM_WARPS = 8  # with BLOCK_S: 62-65 registers on sm_80/sm_90 at head_dim 128, no spills (tests/test_gpu_contracts.py)
TARGET_PROGRAMS = 264  # split the key range until rows x kv heads x splits reach this (~2 waves of 132 SMs)
MIN_SPLIT = 256  # ... but never below this many slots per split


def use_kernel(x: torch.Tensor) -> bool:
    """The decode step's switch (adamame/model.py) for activations x. ADAMAME_KERNELS: auto (default) takes the kernel
    for CUDA tensors when triton is installed; triton forces it (CPU tensors need TRITON_INTERPRET=1 set before triton
    is imported); torch never takes it (the decode step then attends with SDPA and a bias: the escape hatch)."""
    mode = os.environ.get("ADAMAME_KERNELS", "auto")
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"ADAMAME_KERNELS={mode!r}: use triton, torch or auto")
    if mode == "triton" and not (_kernel_runs(x) or x.is_meta):  # on meta, the fake answers
        raise RuntimeError("ADAMAME_KERNELS=triton needs triton, and on CPU tensors TRITON_INTERPRET=1 before import")
    return mode == "triton" or (mode == "auto" and triton is not None and x.is_cuda)


def _kernel_runs(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def num_splits(rows: int, kv_heads: int, slots: int) -> int:
    """Splits of the key range for a step of `rows` rows over `slots` slots: a function of the bucket only."""
    by_programs = -(-TARGET_PROGRAMS // max(1, rows * kv_heads))
    return max(1, min(by_programs, slots // MIN_SPLIT))


def gather_rows(pool, table):
    """The rows' slots as a static cache: pool [P, n_kv, D] through table [R, W] -> [R, n_kv, W * BLOCK_S, D]."""
    s = torch.arange(table.shape[1] * BLOCK_S, device=pool.device)
    return pool[table.long()[:, s // BLOCK_S] * BLOCK_S + s % BLOCK_S].transpose(1, 2)


def decode_attention_torch(q, k, v, table, start, end, scale=None):
    """Reference: q [R, H, D], k/v pools [P, n_kv, D] in blocks of BLOCK_S slots, table [R, W] (row r's logical slot
    s is pool slot table[r, s // BLOCK_S] * BLOCK_S + s % BLOCK_S), start/end [R] int; row r attends to its logical
    slots [start_r, end_r). Returns [R, H, D] in q's dtype; a row with an empty range gets zeros."""
    k, v = gather_rows(k, table), gather_rows(v, table)
    R, H, D = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qg = q.float().view(R, n_kv, H // n_kv, D)
    s = torch.einsum("rgqd,rgsd->rgqs", qg, k.float()) * scale
    slot = torch.arange(S, device=q.device)
    keep = (slot >= start.long()[:, None]) & (slot < end.long()[:, None])  # [R, S]
    s = s.masked_fill(~keep[:, None, None], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # an empty range: all -inf, softmax nan, output 0
    return torch.einsum("rgqs,rgsd->rgqd", p, v.float()).reshape(R, H, D).to(q.dtype)


if triton is not None:

    @triton.jit
    def _attend(q, kptrs, vptrs, smask, kv_mask, scale, m, lsum, acc, DOT_F32: tl.constexpr):
        # one block of BLOCK slots into the online softmax (running max m, sum l, accumulator acc; float32)
        kblk = tl.load(kptrs, mask=kv_mask, other=0.0)  # [BLOCK, D]
        if DOT_F32:  # the interpreter's tl.dot mishandles bfloat16 operands: give it float32 ones
            kblk = kblk.to(tl.float32)
        scores = tl.dot(q, tl.trans(kblk), input_precision="ieee") * scale  # [queries, BLOCK]
        scores = tl.where(smask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        lsum = lsum * alpha + tl.sum(p, axis=1)
        vblk = tl.load(vptrs, mask=kv_mask, other=0.0)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p.to(vblk.dtype).to(tl.float32), vblk.to(tl.float32),
                                                input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vblk.dtype), vblk, input_precision="ieee")
        return m_new, lsum, acc

    @triton.jit
    def _decode_attn_kernel(q_ptr, k_ptr, v_ptr, t_ptr, out_ptr, acc_ptr, ml_ptr, start_ptr, end_ptr, count_ptr,
                            pend_ptr, sq_r, sq_h, st_r, sk_h, sk_s, sv_h, sv_s, split_len, scale,
                            REP: tl.constexpr, REP_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                            SPLITS: tl.constexpr, BLOCK: tl.constexpr, DOT_F32: tl.constexpr,
                            COUNT: tl.constexpr, CASCADE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        lo = tl.maximum(tl.load(start_ptr + row), split * split_len)
        hi = tl.minimum(tl.load(end_ptr + row), (split + 1) * split_len)
        heads = kvh * REP + tl.arange(0, REP_PAD)
        hmask = tl.arange(0, REP_PAD) < REP
        d = tl.arange(0, D_PAD)
        dmask = d < D
        q = tl.load(q_ptr + row * sq_r + heads[:, None] * sq_h + d[None, :], mask=hmask[:, None] & dmask[None, :],
                    other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        kbase = k_ptr + kvh * sk_h
        vbase = v_ptr + kvh * sv_h
        if CASCADE:  # the shared prompt [start, pend) was read by _prefix_kernel; the combine kernel merges it
            lo = tl.maximum(lo, tl.load(pend_ptr + row))
        m = tl.full((REP_PAD,), float("-inf"), tl.float32)
        lsum = tl.zeros((REP_PAD,), tl.float32)
        acc = tl.zeros((REP_PAD, D_PAD), tl.float32)
        first = tl.where(hi > lo, lo // BLOCK * BLOCK, hi)  # an empty range visits no block (not the one holding lo)
        for s0 in range(first, hi, BLOCK):  # this row's blocks: nothing outside [start, end) is loaded
            s = s0 + tl.arange(0, BLOCK)
            smask = (s >= lo) & (s < hi)
            kv_mask = smask[:, None] & dmask[None, :]
            at = tl.load(t_ptr + row * st_r + s0 // BLOCK) * BLOCK + tl.arange(0, BLOCK)  # pool slots (int32)
            m, lsum, acc = _attend(q, kbase + at[:, None] * sk_s + d[None, :], vbase + at[:, None] * sv_s + d[None, :],
                                   smask, kv_mask, scale, m, lsum, acc, DOT_F32)
            if COUNT:  # tests only: blocks visited and slots loaded, per row
                tl.atomic_add(count_ptr + row * 2, 1)
                tl.atomic_add(count_ptr + row * 2 + 1, tl.sum(smask.to(tl.int32), axis=0))
        rh = row * (REP * tl.num_programs(1)) + heads  # the output's (row, head) [R, H]
        if SPLITS == 1 and not CASCADE:  # the answer: acc / l in q's dtype [R, H, D], an empty row 0 (no stack frame)
            o = tl.where(lsum[:, None] > 0, acc / lsum[:, None], 0.0)
            tl.store(out_ptr + rh[:, None] * D + d[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=hmask[:, None] & dmask[None, :])
        else:  # partial results [R, H, SPLITS, D] and [R, H, SPLITS, 2] (m, l), contiguous
            part = rh * SPLITS + split
            tl.store(acc_ptr + part[:, None] * D + d[None, :], acc, mask=hmask[:, None] & dmask[None, :])
            tl.store(ml_ptr + part * 2, m, mask=hmask)
            tl.store(ml_ptr + part * 2 + 1, lsum, mask=hmask)

    @triton.jit
    def _prefix_kernel(q_ptr, k_ptr, v_ptr, t_ptr, mem_ptr, start_ptr, pend_ptr, end_ptr, pacc_ptr, pml_ptr,
                       sq_r, sq_h, st_r, sk_h, sk_s, sv_h, sv_s, scale, REP: tl.constexpr, REPP: tl.constexpr,
                       GROUP: tl.constexpr, ROWS: tl.constexpr, QB: tl.constexpr, D: tl.constexpr,
                       D_PAD: tl.constexpr, BLOCK: tl.constexpr, DOT_F32: tl.constexpr):
        # program (lead row, kv head): the queries of up to ROWS rows that share a prompt (members[lead], rows of one
        # group; a row that leads none has -1s) x the rep heads of this kv head, as one [QB, D] block against the
        # prompt's slots [start, pend) of the lead row's blocks: each prompt block is read once for those rows
        lead = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        i = tl.arange(0, QB)
        j, h = i // REPP, i % REPP
        member = tl.load(mem_ptr + lead * GROUP + j, mask=j < ROWS, other=-1)
        mrow = tl.maximum(member, 0).to(tl.int64)
        valid = (member >= 0) & (h < REP)
        live = tl.load(end_ptr + mrow, mask=member >= 0, other=0) > 0
        first = tl.load(mem_ptr + lead * GROUP)
        fm = tl.maximum(first, 0).to(tl.int64)
        lo = tl.load(start_ptr + fm)
        blk0 = lo // BLOCK * BLOCK
        hi = tl.load(pend_ptr + fm)
        hi = tl.where((first >= 0) & (tl.max(live.to(tl.int32), axis=0) > 0) & (hi > lo), hi, blk0)
        heads = kvh * REP + h
        d = tl.arange(0, D_PAD)
        dmask = d < D
        q = tl.load(q_ptr + mrow[:, None] * sq_r + heads[:, None] * sq_h + d[None, :],
                    mask=valid[:, None] & dmask[None, :], other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        kbase = k_ptr + kvh * sk_h
        vbase = v_ptr + kvh * sv_h
        m = tl.full((QB,), float("-inf"), tl.float32)
        lsum = tl.zeros((QB,), tl.float32)
        acc = tl.zeros((QB, D_PAD), tl.float32)
        for s0 in range(blk0, hi, BLOCK):
            s = s0 + tl.arange(0, BLOCK)
            smask = (s >= lo) & (s < hi)
            kv_mask = smask[:, None] & dmask[None, :]
            at = tl.load(t_ptr + fm * st_r + s0 // BLOCK).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            m, lsum, acc = _attend(q, kbase + at[:, None] * sk_s + d[None, :], vbase + at[:, None] * sv_s + d[None, :],
                                   smask, kv_mask, scale, m, lsum, acc, DOT_F32)
        rh = mrow * (REP * tl.num_programs(1)) + heads  # each member's (row, head): its unnormalised state
        tl.store(pacc_ptr + rh[:, None] * D + d[None, :], acc, mask=valid[:, None] & dmask[None, :])
        tl.store(pml_ptr + rh * 2, m, mask=valid)
        tl.store(pml_ptr + rh * 2 + 1, lsum, mask=valid)

    @triton.jit
    def _combine_kernel(acc_ptr, ml_ptr, out_ptr, pacc_ptr, pml_ptr, start_ptr, end_ptr, SPLITS: tl.constexpr,
                        SPLITS_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, H: tl.constexpr,
                        CASCADE: tl.constexpr):
        # program (row * H + head): out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s over the splits, and with
        # the cascade the shared prompt's state as one more (for a row that reads: end > 0)
        rh = tl.program_id(0).to(tl.int64)
        s = tl.arange(0, SPLITS_PAD)
        smask = s < SPLITS
        d = tl.arange(0, D_PAD)
        dmask = d < D
        m = tl.load(ml_ptr + (rh * SPLITS + s) * 2, mask=smask, other=float("-inf"))
        lsum = tl.load(ml_ptr + (rh * SPLITS + s) * 2 + 1, mask=smask, other=0.0)
        top = tl.max(m, axis=0)
        if CASCADE:
            row = rh // H
            reads = tl.load(end_ptr + row) > 0  # an active row (its prompt's state exists); others read nothing
            pm = tl.where(reads, tl.load(pml_ptr + rh * 2), float("-inf"))
            pl = tl.where(reads, tl.load(pml_ptr + rh * 2 + 1), 0.0)
            top = tl.maximum(top, pm)
        top = tl.where(top == float("-inf"), 0.0, top)
        w = tl.exp(m - top)  # a split that read nothing weighs 0
        acc = tl.load(acc_ptr + (rh * SPLITS + s)[:, None] * D + d[None, :], mask=smask[:, None] & dmask[None, :],
                      other=0.0)
        num, den = tl.sum(acc * w[:, None], axis=0), tl.sum(lsum * w, axis=0)
        if CASCADE:
            wp = tl.exp(pm - top)
            num += tl.where(reads, tl.load(pacc_ptr + rh * D + d, mask=dmask, other=0.0), 0.0) * wp
            den += pl * wp
        o = num / tl.maximum(den, 1e-30)
        tl.store(out_ptr + rh * D + d, o.to(out_ptr.dtype.element_ty), mask=dmask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _launch(q, k, v, table, start, end, scale, members=None, pend=None, *, count=None):
    R, H, D = q.shape
    n_kv, S = k.shape[1], table.shape[1] * BLOCK_S
    rep = H // n_kv
    splits = num_splits(R, n_kv, S)
    split_len = -(-S // (splits * BLOCK_S)) * BLOCK_S  # whole blocks per split
    out = torch.empty(R, H, D, dtype=q.dtype, device=q.device)
    parts = splits > 1 or members is not None  # the main kernel leaves unnormalised states for _combine_kernel
    acc = torch.empty(R, H, splits, D, dtype=torch.float32, device=q.device) if parts else out
    ml = torch.empty(R, H, splits, 2, dtype=torch.float32, device=q.device) if parts else out
    if not R:
        return out
    dot_f32 = q.dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"
    strides = (q.stride(0), q.stride(1), table.stride(0), k.stride(1), k.stride(0), v.stride(1), v.stride(0))
    cascade = members is not None
    pacc = torch.empty(R, H, D, dtype=torch.float32, device=q.device) if cascade else out
    pml = torch.empty(R, H, 2, dtype=torch.float32, device=q.device) if cascade else out
    name = "_prefix_kernel"
    try:
        if cascade:  # each group's prompt once, for all its rows' queries
            repp = _next_pow2(rep)
            rows = max(1, min(members.shape[1], PREFIX_QUERIES // repp))
            _prefix_kernel[(R, n_kv)](q, k, v, table, members, start, pend, end, pacc, pml, *strides, scale, REP=rep,
                                      REPP=repp, GROUP=members.shape[1], ROWS=rows, QB=max(16, repp * rows), D=D,
                                      D_PAD=max(16, _next_pow2(D)), BLOCK=BLOCK_S, num_warps=PREFIX_WARPS,
                                      DOT_F32=dot_f32)
        name = "_decode_attn_kernel"
        _decode_attn_kernel[(R, n_kv, splits)](
            q, k, v, table, out, acc, ml, start, end, out if count is None else count, pend if cascade else start,
            *strides, split_len, scale,
            REP=rep, REP_PAD=max(16, _next_pow2(rep)), D=D, D_PAD=max(16, _next_pow2(D)), SPLITS=splits,
            BLOCK=BLOCK_S, num_warps=NUM_WARPS, COUNT=count is not None, CASCADE=cascade, DOT_F32=dot_f32)
        if parts:  # FlashDecoding's second pass (and the cascade's merge), one program per (row, head)
            name = "_combine_kernel"
            _combine_kernel[(R * H,)](acc, ml, out, pacc, pml, start, end, SPLITS=splits,
                                      SPLITS_PAD=_next_pow2(splits), D=D, D_PAD=max(16, _next_pow2(D)), H=H,
                                      CASCADE=cascade, num_warps=4 if splits > 1 else 1)
    except Exception as e:  # noqa: BLE001  (triton raises its own compilation, resource and driver errors)
        raise RuntimeError(f"Triton kernel {name} failed ({type(e).__name__}: "
                           f"{str(e).strip()[:300]}); ADAMAME_KERNELS=torch decodes with SDPA instead") from e
    return out


@torch.library.custom_op("adamame::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, start: torch.Tensor,
                     end: torch.Tensor, scale: float, members: torch.Tensor | None = None,
                     pend: torch.Tensor | None = None) -> torch.Tensor:
    """q [R, H, D] (any strides, unit last), k/v pools [P, n_kv, D] in blocks of BLOCK_S slots (unit last stride),
    table [R, W] int32 (unit last stride; W blocks: the step's slot bucket), start/end [R] int32, contiguous -> [R, H,
    D] in q's dtype: softmax(q k^T * scale) v over logical slots [start_r, end_r) of each row, slot s at pool slot
    table[r, s // BLOCK_S] * BLOCK_S + s % BLOCK_S. Where the kernel cannot run (no triton; CPU tensors outside the
    Triton interpreter) the reference computes it.

    Cascade (members [R, GROUP] int32 and pend [R] int32, contiguous): rows that share a prompt's blocks (a group's
    samples) read it once. Row r's slots [start_r, pend_r) are the shared prompt, and members[r] lists the rows whose
    prompt row r reads for all of them (row r first, then others, -1 after; -1 only in a row that leads none; at
    most PREFIX_QUERIES // rep rows, rep rounded up to a power of two: adamame.paging.group_rows). Every row with
    end > 0 must be listed by exactly one lead row of the same prompt blocks and range. The result is the same
    function."""
    if start.dtype != torch.int32 or end.dtype != torch.int32 or start.stride(0) != 1 or end.stride(0) != 1:
        raise ValueError("decode_attention: start and end must be contiguous int32 tensors")
    if table.dtype != torch.int32 or table.stride(-1) != 1:
        raise ValueError("decode_attention: the block table must be an int32 tensor with a unit last stride")
    if max(k.numel(), v.numel()) >= 2**31:  # the kernel's pool offsets are 32-bit (no stack frame on sm_90)
        raise ValueError("decode_attention: a layer's pool holds 2^31 values or more; use a smaller cache")
    if (members is None) != (pend is None) or members is not None and (
            members.dtype != torch.int32 or pend.dtype != torch.int32 or not members.is_contiguous()
            or not pend.is_contiguous() or members.shape[0] != q.shape[0]):
        raise ValueError("decode_attention: members [R, GROUP] and pend [R] go together, contiguous int32")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:  # the kernel steps head_dim by 1
        raise ValueError("decode_attention: q, k and v need a unit stride in their last dimension")
    if not _kernel_runs(q):
        return decode_attention_torch(q, k, v, table, start, end, scale)
    return _launch(q, k, v, table, start, end, scale, members, pend)


def blocks_and_slots_read(q, k, v, table, start, end) -> torch.Tensor:
    """[R, 2] int32: per row, the blocks the kernel visits and the slots it loads, summed over KV heads and splits
    (what the tests hold against each row's range)."""
    count = torch.zeros(q.shape[0], 2, dtype=torch.int32, device=q.device)
    _launch(q, k, v, table, start, end, q.shape[-1] ** -0.5, count=count)
    return count


@decode_attention.register_fake
def _(q, k, v, table, start, end, scale, members=None, pend=None):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)
