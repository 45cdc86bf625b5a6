"""The fused sampler: a row's next token and its log-probability from its logits in one read, in Triton.

Why: at the paper's rollout shape a decode step's sampler is, after the KV cache, its largest traffic. In PyTorch
(adamame/generate.py's sample_next) it moves ~68 bytes per vocabulary entry and row: the bf16 logits, their float32
copy, the temperature's divide, log-softmax, exp and a float64 CDF. This kernel reads the logits (bf16 or float32)
once and gives two numbers per row: the token y ~ softmax(z / T) and log softmax(z / T)[y] (the trainer's
definition), or at T = 0 the greedy token (the first maximum) and its log-probability at T = 1.

How, with one exp per entry and no per-entry random number (a race such as Gumbel-max over the whole vocabulary
needs a random number and two logs per entry, which the step-time model in bench/generate.py finds slower than the
read): the vocabulary is cut into blocks of BLOCK entries, and a program walks its row's blocks once:

    per block b: x = z * (1 / T), m_b = max x, p = exp(x - m_b), s_b = sum p; its candidate c_b by inverting the
                 block's CDF (cumsum p) at u_b s_b, u_b a uniform number keyed by (seed, sample, token index, 2b);
    between blocks, Gumbel-max over the blocks' masses: the row's token is the candidate of the block with the
                 largest m_b + log s_b + g_b, g_b = -log(-log v_b) (v_b keyed by 2b + 1), which is block b with
                 probability s_b e^(m_b) / sum of all; within it the token is v with probability p_v / s_b. So
                 y ~ softmax(x), up to float32 rounding (errors of a few 2^-24 of a block's mass). The
                 running (M, S) of the blocks' maxima and masses give the log-sum-exp M + log S.

When rows are few, a row's blocks are split over several programs (`num_splits`: a function of the row count and
the vocabulary only, so a CUDA graph replays it); their (M, S, best score, candidate) are merged by a second
kernel (`_merge` is its reference): the op is one kernel launch, or two with splits, and nothing in PyTorch. A maximum
does not depend on how the blocks are grouped, so for the same logits a sample's token is the same whatever the
number of programs, rows or batch (on a GPU the bf16 logits themselves may differ in their last bits between row
buckets, which can move a draw that sits on a boundary). The uniform numbers come from a counter-based hash of
(seed, sample, token index, stream), so nothing on the host is needed: the op runs inside a CUDA graph, its seed,
temperature, samples and token indices in device tensors. It is registered as `adamame::sample` (torch.library): op
recorders and the meta device see one op.

`sample_torch` is the same algorithm in plain PyTorch (the reference the tests hold the kernel to, and what the op
computes where the kernel cannot run). `use_kernel` is the decode step's switch: ADAMAME_SAMPLER, else
ADAMAME_KERNELS (auto: the kernel for CUDA tensors when triton is installed). The same seed gives other tokens here
than through sample_next (another way of drawing from the same distribution).

Imports: torch, triton (optional).
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BLOCK = 2048  # vocabulary entries per block (the paper's 151,936 is 75 blocks)
NUM_WARPS = 8
TARGET_PROGRAMS = 264  # split a row's blocks until rows x splits reach this (~2 waves of 132 SMs)
MIN_BLOCKS = 4  # ... but never below this many blocks per split
MASK32 = 0xFFFFFFFF


def use_kernel(x: torch.Tensor) -> bool:
    """The switch for a decode step's tensors x: ADAMAME_SAMPLER, else ADAMAME_KERNELS: auto (default) takes the kernel
    for CUDA tensors when triton is installed; triton forces it (CPU tensors need TRITON_INTERPRET=1 set before
    triton is imported); torch never takes it (the caller samples in PyTorch: the escape hatch)."""
    mode = os.environ.get("ADAMAME_SAMPLER") or os.environ.get("ADAMAME_KERNELS", "auto")
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"ADAMAME_SAMPLER / ADAMAME_KERNELS={mode!r}: use triton, torch or auto")
    if mode == "triton" and not (_kernel_runs(x) or x.is_meta):  # on meta, the fake answers
        raise RuntimeError("the Triton sampler needs triton, and on CPU tensors TRITON_INTERPRET=1 before import")
    return mode == "triton" or (mode == "auto" and triton is not None and x.is_cuda)


def _kernel_runs(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def num_splits(rows: int, vocab: int, block: int = BLOCK) -> int:
    """Programs per row: a function of the row count and the vocabulary only (graph-safe)."""
    blocks = -(-vocab // block)
    return max(1, min(-(-TARGET_PROGRAMS // max(1, rows)), blocks // MIN_BLOCKS))


def seed_tensor(seed: int, device) -> torch.Tensor:
    """A seed as the op takes it: int64 [2], its low and high 32 bits."""
    return torch.tensor([seed & MASK32, (seed >> 32) & MASK32], dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------------------------- the keyed numbers

def _mix32(x):
    """murmur3's 32-bit finaliser on int64 values holding unsigned 32-bit ones (PyTorch or Triton tensors). generate.py
    has its own copy, so that each module copies without the other."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def _row_key(seed, sample, index):
    """A row's key from the seed [2] and its (sample, token index)."""
    return _mix32(_mix32((sample & MASK32) ^ seed[0]) ^ index) ^ seed[1]


def _unit(h):
    """A 32-bit hash -> a float32 number in (0, 1): 23 random bits, centred, so 0 < v <= 1 - 2^-24 exactly (24 bits
    plus the half would round the largest up to 1.0, and -log(-log v) to +inf)."""
    return ((h >> 9).to(torch.float32) + 0.5) * 2.0 ** -23


def _uniform(key, stream):
    """A float32 uniform number in (0, 1) for stream `stream` of a row's key."""
    return _unit(_mix32(key ^ ((stream * 0x9E3779B1) & MASK32)))


# ---------------------------------------------------------------------------------------------- the reference

def sample_torch(logits, inv_t, seed, sample, index, greedy: bool, *, block: int = BLOCK, splits: int | None = None):
    """The kernel's algorithm in PyTorch (float32): (tokens [R] int64, log-probabilities [R] float32) for logits
    [R, V] at temperature 1 / inv_t ([1] float32; greedy: argmax, log-probability at T = 1), seed int64 [2], the
    rows' sample ids and token indices [R] int64. `splits` groups the blocks as the kernel's programs do (the result
    does not depend on it)."""
    R, V = logits.shape
    splits = num_splits(R, V, block) if splits is None else splits
    nb = -(-V // block)
    per = -(-nb // splits)
    key = _row_key(seed, sample, index)
    x = torch.full((R, nb * block), float("-inf"), device=logits.device)
    x[:, :V] = logits.float() * (1.0 if greedy else inv_t.float())
    x = x.view(R, nb, block)
    cols = torch.arange(block, device=x.device)
    state = []  # per split: (M, S, best score, candidate, its x)
    for j in range(splits):
        M = torch.full((R,), float("-inf"), device=x.device)
        S = torch.zeros(R, device=x.device)
        best = torch.full((R,), float("-inf"), device=x.device)
        cand = torch.zeros(R, dtype=torch.int64, device=x.device)
        xc = torch.full((R,), float("-inf"), device=x.device)
        for b in range(j * per, min((j + 1) * per, nb)):
            xb = x[:, b]
            bm = xb.amax(1)
            safe = torch.where(bm == float("-inf"), 0.0, bm)  # a block of -inf only: mass 0, never chosen
            p = torch.exp(xb - safe[:, None])
            s = p.sum(1)
            if greedy:
                c, score = xb.argmax(1), bm
            else:
                cum = p.cumsum(1)  # inverted at u times its own total (the sum s may differ in its last bits)
                k = (cum <= (_uniform(key, 2 * b) * cum[:, -1])[:, None]).sum(1)
                c = torch.minimum(k, torch.where(p > 0, cols, 0).amax(1))
                score = safe + torch.log(s) - torch.log(-torch.log(_uniform(key, 2 * b + 1)))
            new_m = torch.maximum(M, bm)
            ref = torch.where(new_m == float("-inf"), 0.0, new_m)
            S = S * torch.exp(M - ref) + s * torch.exp(safe - ref)
            M = new_m
            take = score > best  # ties: the first block
            best = torch.where(take, score, best)
            cand = torch.where(take, b * block + c, cand)
            xc = torch.where(take, xb.gather(1, c[:, None])[:, 0], xc)
        state.append((M, S, best, cand, xc))
    return _merge(*(torch.stack(t, 1) for t in zip(*state)))


def _merge(M, S, best, cand, xc):
    """The programs' (M, S, best score, candidate, its x) [R, splits] -> (token, log-probability): the candidate of
    the best score (ties: the first), log-probability its x less the log-sum-exp of all."""
    top = M.amax(1, keepdim=True)
    lse = top[:, 0] + torch.log((S * torch.exp(M - top)).sum(1))
    j = best.argmax(1, keepdim=True)
    return cand.gather(1, j)[:, 0], xc.gather(1, j)[:, 0] - lse


# ---------------------------------------------------------------------------------------------- the kernel

if triton is not None:

    @triton.jit
    def _mix32_tl(x):
        x = x ^ (x >> 16)
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x = x ^ (x >> 13)
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    @triton.jit
    def _uniform_tl(key, stream):
        h = _mix32_tl(key ^ ((tl.cast(stream, tl.int64) * 0x9E3779B1) & 0xFFFFFFFF))
        return ((h >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # as _unit: 23 bits, centred, times 2^-23

    @triton.jit
    def _sample_kernel(z_ptr, sz, state_ptr, cand_ptr, tok_ptr, lp_ptr, inv_t_ptr, seed_ptr, sample_ptr, index_ptr,
                       count_ptr, V, per, BLOCK: tl.constexpr, SPLITS: tl.constexpr, GREEDY: tl.constexpr,
                       COUNT: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        s0, s1 = tl.load(seed_ptr), tl.load(seed_ptr + 1)
        key = _mix32_tl(_mix32_tl((tl.load(sample_ptr + row) & 0xFFFFFFFF) ^ s0) ^ tl.load(index_ptr + row)) ^ s1
        inv_t = 1.0 if GREEDY else tl.load(inv_t_ptr)
        cols = tl.arange(0, BLOCK)
        M = -float("inf")
        S = 0.0
        best = -float("inf")
        cand = 0
        xc = -float("inf")
        b0 = split * per
        b1 = tl.minimum(b0 + per, tl.cdiv(V, BLOCK))
        for b in range(b0, b1):  # this row's blocks, each entry loaded once
            idx = b * BLOCK + cols
            valid = idx < V
            x = tl.load(z_ptr + row * sz + idx, mask=valid, other=-float("inf")).to(tl.float32) * inv_t
            bm = tl.max(x, axis=0)
            safe = tl.where(bm == -float("inf"), 0.0, bm)  # a block of -inf only: mass 0, never chosen
            p = tl.exp(x - safe)
            s = tl.sum(p, axis=0)
            if GREEDY:
                c = tl.argmax(x, axis=0)
                score = bm
            else:
                cum = tl.cumsum(p, axis=0)  # inverted at u times its own total (the sum s may differ in its last bits)
                k = tl.sum((cum <= _uniform_tl(key, 2 * b) * tl.max(cum, axis=0)).to(tl.int32), axis=0)
                c = tl.minimum(k, tl.max(tl.where(p > 0, cols, 0), axis=0))
                score = safe + tl.log(s) - tl.log(-tl.log(_uniform_tl(key, 2 * b + 1)))
            new_m = tl.maximum(M, bm)
            ref = tl.where(new_m == -float("inf"), 0.0, new_m)
            S = S * tl.exp(M - ref) + s * tl.exp(safe - ref)
            M = new_m
            take = score > best  # ties: the first block
            best = tl.where(take, score, best)
            cand = tl.where(take, b * BLOCK + c, cand)
            xc = tl.where(take, tl.sum(tl.where(cols == c, x, 0.0), axis=0), xc)
            if COUNT:  # tests only: entries loaded per row
                tl.atomic_add(count_ptr + row, tl.sum(valid.to(tl.int32), axis=0))
        if SPLITS == 1:  # nothing to choose between: the candidate, its x less M + log S
            tl.store(tok_ptr + row, cand.to(tl.int64))
            tl.store(lp_ptr + row, xc - M - tl.log(S))
        else:
            out = row * SPLITS + split  # state [R, SPLITS, 4] (M, S, best score, x of the candidate), cand [R, SPLITS]
            tl.store(state_ptr + out * 4, M)
            tl.store(state_ptr + out * 4 + 1, S)
            tl.store(state_ptr + out * 4 + 2, best)
            tl.store(state_ptr + out * 4 + 3, xc)
            tl.store(cand_ptr + out, cand.to(tl.int64))

    @triton.jit
    def _merge_kernel(state_ptr, cand_ptr, tok_ptr, lp_ptr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
        # program (row): _merge over the row's programs: the best score's candidate, its x less the log-sum-exp
        row = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, SPLITS_PAD)
        jm = j < SPLITS
        at = (row * SPLITS + j) * 4
        M = tl.load(state_ptr + at, mask=jm, other=-float("inf"))
        S = tl.load(state_ptr + at + 1, mask=jm, other=0.0)
        best = tl.load(state_ptr + at + 2, mask=jm, other=-float("inf"))
        xc = tl.load(state_ptr + at + 3, mask=jm, other=0.0)
        top = tl.max(M, axis=0)
        lse = top + tl.log(tl.sum(S * tl.exp(M - top), axis=0))
        k = tl.argmax(best, axis=0, tie_break_left=True)  # ties: the first
        tl.store(tok_ptr + row, tl.load(cand_ptr + row * SPLITS + k))
        tl.store(lp_ptr + row, tl.sum(tl.where(j == k, xc, 0.0), axis=0) - lse)


def _launch(logits, inv_t, seed, sample, index, greedy, *, block=BLOCK, splits=None, count=None):
    R, V = logits.shape
    splits = num_splits(R, V, block) if splits is None else splits
    blocks = -(-V // block)
    per = -(-blocks // splits)  # blocks per program
    tok = torch.empty(R, dtype=torch.int64, device=logits.device)
    lp = torch.empty(R, dtype=torch.float32, device=logits.device)
    state = torch.empty(R, splits, 4, dtype=torch.float32, device=logits.device) if splits > 1 else lp
    cand = torch.empty(R, splits, dtype=torch.int64, device=logits.device) if splits > 1 else tok
    if not R:
        return tok, lp
    name = "_sample_kernel"
    try:
        _sample_kernel[(R, splits)](logits, logits.stride(0), state, cand, tok, lp, inv_t, seed, sample, index,
                                    lp if count is None else count, V, per, BLOCK=block, SPLITS=splits,
                                    GREEDY=greedy, COUNT=count is not None, num_warps=NUM_WARPS)
        if splits > 1:  # one program per row merges its programs' results
            name = "_merge_kernel"
            _merge_kernel[(R,)](state, cand, tok, lp, SPLITS=splits, SPLITS_PAD=1 << (splits - 1).bit_length(),
                                num_warps=1)
    except Exception as e:  # noqa: BLE001  (triton raises its own compilation, resource and driver errors)
        raise RuntimeError(f"Triton kernel {name} failed ({type(e).__name__}: {str(e).strip()[:300]}); "
                           f"ADAMAME_SAMPLER=torch samples in PyTorch instead") from e
    return tok, lp


@torch.library.custom_op("adamame::sample", mutates_args=())
def sample(logits: torch.Tensor, inv_t: torch.Tensor, seed: torch.Tensor, sample_ids: torch.Tensor,
           index: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] (bf16, fp16 or fp32; unit last stride), inv_t [1] float32 (1 / temperature), seed [2] int64
    (seed_tensor), sample_ids and index [R] int64 (each row's sample and token index) -> (tokens [R] int64,
    log-probabilities [R] float32). Where the kernel cannot run (no triton; CPU tensors outside the Triton
    interpreter) the reference computes it."""
    if logits.stride(-1) != 1:
        raise ValueError("sample: the logits need a unit stride in their last dimension")
    if not _kernel_runs(logits):
        return sample_torch(logits, inv_t, seed, sample_ids, index, greedy)
    return _launch(logits, inv_t, seed, sample_ids, index, greedy)


@sample.register_fake
def _(logits, inv_t, seed, sample_ids, index, greedy):
    R = logits.shape[0]
    return (torch.empty(R, dtype=torch.int64, device=logits.device),
            torch.empty(R, dtype=torch.float32, device=logits.device))


def entries_loaded(logits, inv_t, seed, sample_ids, index, greedy, *, block=BLOCK, splits=None) -> torch.Tensor:
    """[R] int32: the logits the kernel loads per row (the tests hold it to V: each entry once)."""
    count = torch.zeros(logits.shape[0], dtype=torch.int32, device=logits.device)
    _launch(logits, inv_t, seed, sample_ids, index, greedy, block=block, splits=splits, count=count)
    return count
