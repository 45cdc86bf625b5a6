"""Batched sampling with a paged KV cache: the rollout engine for GRPO and evaluation.

Why this shape: in GRPO, generation is most of the wall time, and a decode step of a 1.5B model reads ~3.5 GB of
weights for one token per row, so a step must be memory-bound, not launch-bound, and advance as many rows as the
memory holds. So all of a call's samples decode in one paged KV cache (adamame/paging.py decides which row holds
which blocks), each step is a CUDA graph over bucketed rows and slots, and the host looks at the device only every
`check_every` steps. Sample s's token i is drawn from a number keyed by (seed, s, i), so the samples depend neither
on the batch nor on the cache's size; each sampled token's log-prob is returned as the trainer's forward computes it.

Imports: torch; adamame: model (KVCache, PagedKVCache), paging, sampler (optional: without it every step samples
with sample_next).
"""

import os
import time
from dataclasses import dataclass
from functools import partial

import torch

from .model import KVCache, PagedKVCache
from .paging import BLOCK, GROUP, Scheduler, group_rows, lead, most_rows

try:  # the optional sibling: the fused Triton sampler (without it every step samples with sample_next)
    from .sampler import sample as fused_sample, seed_tensor, use_kernel as use_sampler_kernel
except ImportError:
    fused_sample = None

PREFILL_TOKENS = 8192  # prompt tokens per prefill forward (bounds the prefill's activations)
SLOT_BUCKET = 256  # the decode step attends to the cache in multiples of this many slots
ROW_STEP = 64  # above this many live rows, the decode step's rows are rounded up to a multiple of it
MASK32 = 0xFFFFFFFF


@dataclass
class Sample:
    tokens: list  # generated ids, without the prompt, with the stop token when one was produced
    finish_reason: str  # "stop" or "length"
    logprobs: list | None = None  # log softmax(z / T)[token] per generated token, when asked for


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniforms=None):
    """(tokens [b], their log softmax(z / T) [b]: the trainer's log-probs, at T = 1 when greedy) from logits z [b, V]
    (float32), without a host sync. softmax(z / T) is cut to the top_k tokens, then to the smallest set whose
    probability reaches top_p, and renormalised. A row's token inverts its CDF at its uniform number (uniforms: [b]
    float64 in [0, 1); drawn here if None), so a caller that draws its rows' numbers decouples samples and batch."""
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0]
    logp = torch.log_softmax(logits / temperature if temperature != 1 else logits, -1)
    filt = logp
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(filt, top_k, dim=-1).values[:, -1:]
        filt = filt.masked_fill(filt < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = torch.sort(filt, dim=-1, descending=True)
        probs = sorted_lp.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first is always kept)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filt = filt.masked_fill(drop, float("-inf"))
    probs = logp.exp() if filt is logp else filt.softmax(-1)  # renormalised over the kept tokens
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], dtype=torch.float64, device=probs.device)
    cdf = probs.cumsum(-1, dtype=torch.float64)
    tok = torch.searchsorted(cdf, uniforms[:, None] * cdf[:, -1:], right=True)[:, 0].clamp(max=probs.shape[-1] - 1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _mix32(x):
    """murmur3's 32-bit finaliser on uint32 values in int64 tensors (sampler.py has its own copy: each copies alone)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & MASK32  # the product wraps in int64; its low 32 bits are exact
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def keyed_uniforms(seed: int, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Uniform float64 numbers in [0, 1), one per (sample, token index) pair, from a counter-based hash of (seed,
    sample, index) (53 bits from two 32-bit hashes): no generator state, no host sync, the same number on any device
    and in any batch. generate and the fused sampler draw sample s's token i at (seed, key_s, i), so a seed gives the
    same tokens whatever the rows, preemptions, buckets or cache size (in bf16 a row bucket may move a logit's last
    bits, and a rare draw on a boundary with it)."""
    lo, hi = seed & MASK32, (seed >> 32) & MASK32
    a = _mix32(_mix32((sample & MASK32) ^ lo) ^ index)
    b = _mix32(_mix32((sample & MASK32) ^ hi ^ 0x9E3779B9) ^ index ^ 0x7F4A7C15)
    return ((a << 21) | (b >> 11)).double() * 2.0 ** -53


def cache_slots(prompt_len: int, max_new_tokens: int) -> int:
    """Logical cache slots a row of a generate call may address: its prompt, placed to end on a block boundary
    (adamame/paging.py), then its response, in whole blocks (a multiple of 16, as the SDPA path's bias rows need)."""
    return (-(-prompt_len // BLOCK) + -(-max_new_tokens // BLOCK)) * BLOCK


def free_bytes(device) -> int | None:
    """Memory a new allocation can use: on CUDA the driver's free memory plus what PyTorch's allocator holds
    reserved but unallocated (mem_get_info counts that as used); on CPU the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------- decode step

def pow2_rows(live: int) -> int:
    """Every live count rounded up to a power of two (the row buckets below ROW_STEP, and all of them before)."""
    return 1 << max(0, live - 1).bit_length()


def row_bucket(live: int) -> int:
    """Rows a decode step runs for `live` live rows: the next power of two up to ROW_STEP, then the next multiple of
    ROW_STEP (300 live rows run as 320, not 512; a 512-row rollout visits at most 7 + 7 row buckets)."""
    return pow2_rows(live) if live <= ROW_STEP else -(-live // ROW_STEP) * ROW_STEP


def step_buckets(live: int, slot: int, rows_total: int, slots_total: int, *, slot_bucket: int, pad_rows: bool,
                 rows_fn=row_bucket) -> tuple:
    """(rows, slots) of the decode step that writes cache `slot` with `live` live rows (Decoder; bench/schedule.py)."""
    rows = min(rows_fn(live), rows_total) if pad_rows else live
    return rows, min(-(-(slot + 1) // slot_bucket) * slot_bucket, slots_total)


class Decoder:
    """The decode step over a paged KV cache, eager or as CUDA graphs keyed by (row bucket, slot bucket, sampler).

    A step runs rows [0, R) and slots [0, S) only: R the live rows rounded up by row_bucket, S the largest slot
    written rounded up to a multiple of slot_bucket. On CUDA each bucket is captured once as a graph (lazily, into one
    memory pool) and replayed: one launch per token instead of hundreds; on CPU, or with cuda_graphs=False, the same
    step runs eagerly (R = the live rows). A graph touches only the static buffers below and the cache, so replaying
    it after updating them in place is calling the model."""

    def __init__(self, model, cache: PagedKVCache, cuda_graphs: bool, slot_bucket: int = SLOT_BUCKET, pad_rows=None):
        self.model, self.cache, self.graphs_on, self.bucket = model, cache, cuda_graphs, slot_bucket
        self.pad_rows = cuda_graphs if pad_rows is None else pad_rows  # eager steps need no padding rows
        B, dev = cache.table.shape[0], cache.table.device
        zeros = partial(torch.zeros, dtype=torch.long, device=dev)
        self.tokens, self.positions, self.slot = zeros(B), zeros(B), zeros(B)
        self.active = zeros(B, dtype=torch.bool)  # rows whose output is used (the kernel reads them)
        # the fused sampler's inputs: the rows' samples and token indices, the seed and 1 / temperature
        self.sample, self.index, self.seed, self.inv_t = zeros(B), zeros(B), zeros(2), zeros(1, dtype=torch.float32)
        self.logits = None  # [B, V] float32, made at the first graph that needs it
        self.settings = None  # the generate call whose seed and 1 / temperature the static buffers hold
        self.members, self.pend = torch.full((B, GROUP), -1, dtype=torch.int32, device=dev), zeros(B, dtype=torch.int32)
        self.groups = None  # the look whose prompt groups the static buffers hold (None: no cascade)
        self.graphs, self.pool, self.stream, self.capture_seconds = {}, None, None, 0.0

    @property
    def slots(self) -> int:  # logical slots a row can address
        return self.cache.table.shape[1] * self.cache.block

    def buckets(self, live: int, slot: int) -> tuple:
        return step_buckets(live, slot, self.cache.table.shape[0], self.slots, slot_bucket=self.bucket,
                            pad_rows=self.pad_rows)

    def _run(self, rows, slots, greedy=None):
        """The step's float32 logits [rows, V]; with greedy (True/False) its fused sample (tokens, log-probs). On CUDA
        each active row reads only its own slots (adamame/decode_attention.py); SDPA reads all under a bias."""
        logits = self.model.decode_step(self.tokens, self.positions, self.cache, self.slot, rows, slots,
                                        active=self.active,
                                        groups=None if self.groups is None else (self.members, self.pend))
        if greedy is None:
            return logits.float()
        return fused_sample(logits, self.inv_t, self.seed, self.sample[:rows], self.index[:rows], greedy)

    def _run_into_buffers(self, rows, slots, greedy):  # what a graph records: its outputs stay where it wrote them
        if greedy is None:  # the logits: one buffer for all graphs ([rows, V] float32 each would not fit)
            self.logits[:rows] = self._run(rows, slots)
            return None
        return self._run(rows, slots, greedy)  # (tokens, log-probs) [rows]: the graph's own, read after each replay

    def _capture(self, rows, slots, greedy):
        """Warm up, then capture, on a side stream: what torch.cuda.graph does, minus the full garbage collection
        and empty_cache() it runs before each capture (a rollout captures a few dozen buckets)."""
        graph = torch.cuda.CUDAGraph()
        self.stream = self.stream or torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(self.stream):
            self._run_into_buffers(rows, slots, greedy)  # warm-up (it writes the same values the replay will)
            graph.capture_begin(pool=self.pool)
            try:
                out = self._run_into_buffers(rows, slots, greedy)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        self.pool = self.pool or graph.pool()
        return graph, out

    def __call__(self, tokens, positions, slot, last_slot: int, *, active=None, fused=None, groups=None):
        """Logits [live, V] (float32) of the next token of rows [0, live) whose last tokens go to cache slots `slot`
        [live] (on the device; last_slot: their largest, known to the host, which picks the slot bucket); active
        [live] bool (None: all) marks the rows whose logits are used. fused: None, or (settings, samples [live],
        token indices [live]) to sample inside the step with the fused sampler and return its (tokens, log-probs)
        [live]; groups: None, or (members [live, GROUP], pend [live]) int32, the rows that share a prompt
        (decode_attention's cascade), copied when a new pair is given. With CUDA graphs the outputs are a graph's
        own memory, valid until the next call."""
        live = tokens.shape[0]
        rows, slots = self.buckets(live, last_slot)
        self.tokens[:live], self.positions[:live], self.slot[:live] = tokens, positions, slot
        self.slot[live:].fill_(0)  # a padding row writes slot 0 of its table row: the scratch block (adamame/paging.py)
        self.active[live:].fill_(False)
        self.active[:live] = True if active is None else active
        if groups is not None and groups is not self.groups:  # a look's prompt groups: copied once
            self.members[:live], self.pend[:live] = groups
            self.members[live:].fill_(-1)
            self.pend[live:].fill_(0)
            self.groups = groups
        greedy = None
        if fused is not None:
            cfg, samples, index = fused
            greedy = cfg.temperature == 0
            self.sample[:live], self.index[:live] = samples, index
            if cfg is not self.settings:  # a call's seed and temperature: copied once, not at every step
                self.seed.copy_(cfg.seed_t)
                self.inv_t.copy_(cfg.inv_t)
                self.settings = cfg
        if not self.graphs_on:
            out = self._run(rows, slots, greedy)
            return out[:live] if greedy is None else (out[0][:live], out[1][:live])
        key = (rows, slots, greedy)
        if key not in self.graphs:
            if greedy is None and self.logits is None:
                self.logits = torch.zeros(self.tokens.shape[0], self.model.config.vocab_size, dtype=torch.float32,
                                          device=self.tokens.device)
            t0 = time.perf_counter()
            try:
                self.graphs[key] = self._capture(rows, slots, greedy)
            except RuntimeError as e:
                raise RuntimeError(f"CUDA graph capture of the decode step ({rows} rows x {slots} slots) failed: "
                                   f"{str(e).strip()[:300]}; ADAMAME_CUDA_GRAPHS=0 runs the same step eagerly") from e
            self.capture_seconds += time.perf_counter() - t0
        graph, out = self.graphs[key]
        graph.replay()
        return self.logits[:live] if greedy is None else (out[0][:live], out[1][:live])


def graphs_default(device) -> bool:
    """CUDA graphs for the decode step: on for CUDA devices unless ADAMAME_CUDA_GRAPHS=0 (the eager escape hatch)."""
    flag = os.environ.get("ADAMAME_CUDA_GRAPHS", "1")
    if flag not in ("0", "1"):
        raise ValueError(f"ADAMAME_CUDA_GRAPHS={flag!r}: use 0 (eager decode) or 1")
    return torch.device(device).type == "cuda" and flag == "1"


def make_decoder(model, rows: int, prompt_len: int, max_new_tokens: int, *, cuda_graphs=None,
                 slot_bucket: int = SLOT_BUCKET, blocks: int | None = None) -> Decoder:
    """A paged KV cache of `blocks` blocks (None: what `rows` rows of prompt_len + max_new_tokens tokens need, so
    nothing is ever preempted), a block table for at most `rows` rows in flight, and its decode step, after checking
    the cache against the free memory. Pass it to several generate calls to capture their CUDA graphs once."""
    param = next(model.parameters())
    dev, width = param.device, cache_slots(prompt_len, max_new_tokens) // BLOCK
    blocks = rows * width + 1 if blocks is None else blocks
    use_graphs = graphs_default(dev) if cuda_graphs is None else bool(cuda_graphs)
    need, free = PagedKVCache.nbytes(model.config, blocks, param.dtype), free_bytes(dev)
    if free is not None and need > free:
        raise MemoryError(f"generate: a KV cache of {blocks} blocks of {BLOCK} slots needs {need / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB free on {dev}: use a smaller cache (--rollout-rows, --max-rows), "
                          f"or a smaller max_new_tokens")
    cache = PagedKVCache.allocate(model.config, blocks, rows, width, param.dtype, dev, block=BLOCK)
    return Decoder(model, cache, use_graphs, slot_bucket)


# ---------------------------------------------------------------------------------------------- generate

@dataclass
class State:
    """generate's state on the device. Per sample (a spare at index N takes rows with no sample): the tokens out
    [N + 1, L], their log-probs out_lp, lengths, stopped. Per row in flight (the Scheduler's order): its sample, the
    tokens it has drawn (t), the position and cache slot of the token it feeds next, that token, done, its key."""
    out: torch.Tensor
    out_lp: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor
    sample: torch.Tensor
    t: torch.Tensor
    pos: torch.Tensor
    slot: torch.Tensor
    tok: torch.Tensor
    done: torch.Tensor
    key: torch.Tensor
    ROW = ("sample", "t", "pos", "slot", "tok", "done", "key")

    def take(self, keep) -> None:  # keep these rows, in this order
        for f in self.ROW:
            setattr(self, f, getattr(self, f)[keep])

    def append(self, **rows) -> None:
        for f in self.ROW:
            setattr(self, f, torch.cat([getattr(self, f), rows[f]]))


@dataclass
class Settings:
    seed: int
    temperature: float
    top_k: int
    top_p: float
    eos: torch.Tensor
    pad: int
    limit: torch.Tensor  # [N + 1]: each sample's most tokens (max_new_tokens, or a benchmark's forced lengths)
    keys: torch.Tensor  # [N]: each sample's key in its random numbers (its index, or the caller's sample_keys)
    fused: bool = False  # sample with adamame/sampler.py (top-k 0 and top-p 1 only)
    seed_t: torch.Tensor | None = None  # the fused sampler's seed [2] and 1 / temperature [1], on the device
    inv_t: torch.Tensor | None = None


def draw(st: State, rows, logits, cfg: Settings, picked=None) -> None:
    """Each row's next token from its logits [len(rows), V] (rows: an index tensor, or slice(None) for every live
    row), or the (tokens, log-probs) the fused sampler `picked` inside the decode step, and the stop bookkeeping, on
    the device: no host sync. A sample's token i is keyed_uniforms' (seed, key, i) whichever row draws it; rows
    already done write to the spare sample."""
    sample, t, done = st.sample[rows], st.t[rows], st.done[rows]
    if picked is not None:
        tok, lp = picked
    elif cfg.fused:
        tok, lp = fused_sample(logits, cfg.inv_t, cfg.seed_t, st.key[rows], t, cfg.temperature == 0)
    else:
        u = keyed_uniforms(cfg.seed, st.key[rows], t) if cfg.temperature else None
        tok, lp = sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, u)
    tok = torch.where(done, cfg.pad, tok)
    s, i = torch.where(done, st.out.shape[0] - 1, sample), t.clamp(max=st.out.shape[1] - 1)  # N: the spare sample
    st.out[s, i], st.out_lp[s, i] = tok, lp
    st.lengths[s] += (~done).long()
    hit = torch.isin(tok, cfg.eos) & ~done
    st.stopped[s] |= hit
    st.done[rows] = done | hit | (t + 1 >= cfg.limit[s])
    st.t[rows], st.tok[rows] = t + 1, tok


def prefill(model, cache: PagedKVCache, seqs: list, pad_token_id: int, stats: dict):
    """Write sequences' keys and values into cache blocks: seqs holds (token ids, lead, first logical block, physical
    blocks); a sequence sits at logical slots [lead, lead + len) and its blocks first, first + 1, ... go to the given
    physical blocks. Forwards of at most PREFILL_TOKENS tokens over rows of whole blocks, shortest first; returns
    each sequence's last-position logits [len(seqs), V] float32."""
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    logits = torch.empty(len(seqs), model.config.vocab_size, dtype=torch.float32, device=dev)
    width = [-(-(ld + len(toks)) // BLOCK) * BLOCK for toks, ld, _, _ in seqs]  # a row of whole blocks
    chunks = []
    for j in sorted(range(len(seqs)), key=lambda j: seqs[j][1] + len(seqs[j][0])):
        if chunks and width[j] * (len(chunks[-1]) + 1) <= max(PREFILL_TOKENS, width[chunks[-1][-1]]):
            chunks[-1].append(j)  # every row (as long as the longest) stays in budget
        else:
            chunks.append([j])
    for chunk in chunks:
        W = width[chunk[-1]]
        ids = torch.full((len(chunk), W), pad_token_id, dtype=torch.long)
        mask, last = torch.zeros(2, len(chunk), W, dtype=torch.bool)  # the tokens, and each row's last token
        src, dst = [], []
        for i, j in enumerate(chunk):
            toks, lead, first, phys = seqs[j]
            ids[i, lead:lead + len(toks)] = torch.as_tensor(toks)
            mask[i, lead:lead + len(toks)] = True
            last[i, lead + len(toks) - 1] = True
            for b, p in zip(range(first, width[j] // BLOCK), phys):
                src.append(i * W + b * BLOCK)
                dst.append(p * BLOCK)
        stats["prefill_tokens"] = stats.get("prefill_tokens", 0) + int(mask.sum())
        ids, mask, last = ids.to(dev), mask.to(dev), last.to(dev)
        pos = (torch.arange(W, device=dev) - mask.float().argmax(-1, keepdim=True)).clamp(min=0)
        pre = KVCache.allocate(model.config, len(chunk), W, dtype, dev)
        out = model(ids, positions=pos, mask=mask, cache=pre, logits_at=last)
        logits[torch.tensor(chunk, device=dev)] = out.float()
        if src:
            off = torch.arange(BLOCK)
            src = (torch.tensor(src)[:, None] + off).flatten().to(dev)
            dst = (torch.tensor(dst)[:, None] + off).flatten().to(dev)
            for pool, p in zip(cache.k + cache.v, pre.k + pre.v):
                pool[dst] = p.transpose(1, 2).reshape(-1, *p.shape[1::2])[src]
    return logits


@torch.no_grad()
def generate(model, prompts, *, max_new_tokens, n=1, temperature=1.0, top_p=1.0, top_k=0, eos_token_ids=(),
             seed=None, return_logprobs=False, check_every=8, pad_token_id=0, cuda_graphs=None,
             slot_bucket=SLOT_BUCKET, max_rows=None, cache_blocks=None, stats=None, decoder=None, progress=None,
             response_lengths=None, sample_keys=None):
    """Sample n continuations of every prompt (lists of token ids, any lengths): n * len(prompts) Samples, prompt-major.

    `model` is a plain Transformer (for training, adamame.dist.rollout_copy's). The samples decode in a paged KV cache
    of max_rows rows of the longest prompt and max_new_tokens (None: one per sample), of cache_blocks blocks, or in
    `decoder`'s (make_decoder: one cache and its CUDA graphs for several calls); as many rows run at once as it holds,
    which changes the speed and the memory, not the samples. cuda_graphs: None = graphs_default. `stats` (a dict)
    gets the steps, most rows in flight, preemptions, recomputed tokens, prompt prefills, tokens prefilled, graphs
    and capture seconds; `progress.update(k)` (a tqdm bar) hears of finished samples at each look. response_lengths
    (a benchmark's hook) ends sample s after min(response_lengths[s], max_new_tokens) tokens. sample_keys (one
    integer in [0, 2^32) per sample; default its index) key each sample's random numbers, so a sample can be drawn
    again in another call, among other prompts (evaluate.py keys them by question and candidate).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if response_lengths is not None and (len(response_lengths) != len(prompts) * n or min(response_lengths) < 1):
        raise ValueError(f"response_lengths: one positive length per sample ({len(prompts) * n})")
    if sample_keys is not None and len(sample_keys) != len(prompts) * n:
        raise ValueError(f"sample_keys: one key per sample ({len(prompts) * n})")
    if max_new_tokens < 1 or n < 1 or (max_rows is not None and max_rows < 1):
        raise ValueError(f"max_new_tokens, n and max_rows must be positive (got {max_new_tokens}, {n}, {max_rows})")
    if not (0.0 < top_p <= 1.0) or top_k < 0 or temperature < 0:
        raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}")
    vocab = model.config.vocab_size
    flat = [t for p in prompts for t in p]
    if min(flat) < 0 or max(flat) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab}), got {min(flat)}..{max(flat)}")
    dev = next(model.parameters()).device
    N, Tp = len(prompts) * n, max(len(p) for p in prompts)
    if decoder is None:  # per-row buffers for the most rows admission lets run at once
        blocks = cache_blocks or min(N, max_rows or N) * cache_slots(Tp, max_new_tokens) // BLOCK + 1
        decoder = make_decoder(model, min(N, most_rows(blocks, max_new_tokens)), Tp, max_new_tokens,
                               cuda_graphs=cuda_graphs, slot_bucket=slot_bucket, blocks=blocks)
    elif decoder.slots < cache_slots(Tp, max_new_tokens):
        raise ValueError(f"generate: the decoder's rows address {decoder.slots} slots, this call needs "
                         f"{cache_slots(Tp, max_new_tokens)}")
    cache, last_slot = decoder.cache, decoder.slots - 1
    limits = [min(x, max_new_tokens) for x in (response_lengths or [max_new_tokens] * N)]
    sched = Scheduler([len(p) for p in prompts], n, limits, cache.k[0].shape[0] // BLOCK, check_every,
                      cache.table.shape[0])
    seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    # sample inside the decode step with the fused sampler when it can (top-k 0, top-p 1; on CUDA), else sample_next
    fused = fused_sample is not None and top_k == 0 and top_p == 1.0 and use_sampler_kernel(cache.table)
    keys = torch.tensor(list(range(N) if sample_keys is None else sample_keys), device=dev)
    cfg = Settings(seed, temperature, top_k, top_p, torch.tensor(list(eos_token_ids) or [-1], device=dev), pad_token_id,
                   torch.tensor(limits + [1], device=dev), keys, fused, seed_tensor(seed, dev) if fused else None,
                   torch.tensor([1.0 / temperature if temperature else 1.0], device=dev) if fused else None)
    zeros = partial(torch.zeros, dtype=torch.long, device=dev)
    st = State(out=torch.full((N + 1, max_new_tokens), pad_token_id, dtype=torch.long, device=dev),
               out_lp=zeros(N + 1, max_new_tokens, dtype=torch.float32), lengths=zeros(N + 1),
               stopped=zeros(N + 1, dtype=torch.bool), sample=zeros(0), t=zeros(0), pos=zeros(0), slot=zeros(0),
               tok=zeros(0), done=zeros(0, dtype=torch.bool), key=zeros(0))
    cache.table.zero_()
    read_rows = group_rows(model.config.num_attention_heads // model.config.num_key_value_heads)
    info = {"prefill_tokens": 0, "prompt_prefills": 0, "most_rows": 0}
    group_logits = {}  # a prefilled prompt's last logits, until its last fresh sample is admitted
    steps, finished, done = 0, 0, set()
    while True:  # a look, the host's only syncs: drop finished rows, grow blocks, admit and preempt rows, or stop
        look = sched.look(steps, done)
        apply_look(model, st, cache, sched, look, prompts=prompts, n=n, cfg=cfg, group_logits=group_logits,
                   info=info)
        if progress is not None:  # finished: every sample admitted so far but those running or preempted
            ended = N - len(sched.waiting) - len(sched.rows)
            progress.update(ended - finished)
            finished = ended
        if not sched.rows:
            break
        info["most_rows"] = max(info["most_rows"], len(sched.rows))
        offset, (members, pend) = sched.max_slot_offset(), sched.prompt_groups(read_rows)
        groups = (torch.tensor([m + [-1] * (GROUP - len(m)) for m in members], dtype=torch.int32, device=dev),
                  torch.tensor(pend, dtype=torch.int32, device=dev))
        for _ in range(min(check_every, sched.end_step() - steps)):  # no host sync: the device tracks done rows
            out = decoder(st.tok, st.pos, st.slot, min(offset + steps, last_slot), active=~st.done,
                          fused=(cfg, st.key, st.t) if cfg.fused else None, groups=groups)
            draw(st, slice(None), None, cfg, picked=out) if cfg.fused else draw(st, slice(None), out, cfg)
            moves = (st.slot < last_slot).long()  # a done row stops at the last slot, its start (slot - pos) kept
            st.pos += moves
            st.slot += moves
            steps += 1
        done = {r for r, d in enumerate(st.done.tolist()) if d}

    if stats is not None:
        stats.update(steps=steps, graphs=len(decoder.graphs), capture_seconds=decoder.capture_seconds,
                     preemptions=sched.preemptions, recomputed_tokens=sched.recomputed, **info)
    out, out_lp, lengths, stopped = st.out.cpu(), st.out_lp.cpu(), st.lengths.cpu(), st.stopped.cpu()
    return [Sample(out[r, :int(lengths[r])].tolist(), "stop" if stopped[r] else "length",
                   out_lp[r, :int(lengths[r])].tolist() if return_logprobs else None) for r in range(N)]


def apply_look(model, st: State, cache: PagedKVCache, sched: Scheduler, look, *, prompts, n, cfg: Settings,
               group_logits: dict, info: dict) -> None:
    """Carry out a Scheduler look on the device: drop the rows it let go from the state and the block table, write
    the blocks it grew, prefill what it admitted (each prompt once; a preempted sample's tokens recomputed, in its
    own blocks), and draw the fresh samples' first tokens from their prompt's logits."""
    dev, table = cache.table.device, cache.table
    old, kept = st.sample.shape[0], len(look.keep)
    if kept < old:
        keep = torch.tensor(look.keep, dtype=torch.long, device=dev)
        st.take(keep)
        table[:kept] = table[keep]
        table[kept:old] = 0
    if look.grown:
        r, c, b = zip(*[(j, first + i, p) for j, (first, ps) in look.grown.items() for i, p in enumerate(ps)])
        table[torch.tensor(r, device=dev), torch.tensor(c, device=dev)] = torch.tensor(b, dtype=torch.int32, device=dev)
    if not look.admitted:
        return
    seqs = [(prompts[g], lead(len(prompts[g])), 0, sched.prompt_blocks[g]) for g in look.prefill]
    for r in [r for r in look.admitted if not r.fresh]:  # a preempted sample: its prompt and fed tokens, recomputed
        p = prompts[r.sample // n]
        seqs.append((p + st.out[r.sample, :r.t0 - 1].tolist(), lead(len(p)), r.first, r.blocks))
    if seqs:
        logits = prefill(model, cache, seqs, cfg.pad, info)
        info["prompt_prefills"] += len(look.prefill)
        group_logits.update({g: [logits[i], n] for i, g in enumerate(look.prefill)})  # [logits, samples to admit]
    rows = torch.arange(kept, kept + len(look.admitted), device=dev)
    width = table.shape[1]
    table[rows] = torch.tensor([(sched.table_row(r) + [0] * width)[:width] for r in look.admitted],
                               dtype=torch.int32, device=dev)
    s = [r.sample for r in look.admitted]
    plen = [len(prompts[x // n]) for x in s]
    t = [0 if r.fresh else r.t0 for r in look.admitted]
    s_t = torch.tensor(s, device=dev)
    st.append(sample=s_t, t=torch.tensor(t, device=dev),
              pos=torch.tensor([p + max(x, 1) - 1 for p, x in zip(plen, t)], device=dev),
              slot=torch.tensor([lead(p) + p + max(x, 1) - 1 for p, x in zip(plen, t)], device=dev),
              tok=st.out[s_t, (torch.tensor(t, device=dev) - 1).clamp(min=0)],
              done=torch.zeros(len(s), dtype=torch.bool, device=dev), key=cfg.keys[s_t])
    fresh = [i for i, r in enumerate(look.admitted) if r.fresh]
    if fresh:  # their first tokens, from their prompt's logits
        draw(st, rows[torch.tensor(fresh, device=dev)], torch.stack([group_logits[s[i] // n][0] for i in fresh]), cfg)
    for i in fresh:  # a prompt's logits go with its last fresh sample
        group_logits[s[i] // n][1] -= 1
        if not group_logits[s[i] // n][1]:
            del group_logits[s[i] // n]
