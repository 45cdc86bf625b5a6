"""Batched sampling with a static KV cache: the rollout engine for GRPO and evaluation.

Why this shape: in GRPO, generation is most of the wall time, and a decode step of a 1.5B model reads ~3.5 GB of
weights to produce one token per row, so the step must be memory-bound, not launch-bound. The engine therefore
  * prefills each distinct prompt once (left-padded, in chunks of PREFILL_TOKENS) and copies its cache rows to its n
    samples, instead of recomputing the prompt per sample (GRPO draws n = 8 per prompt);
  * preallocates one KV cache for the whole batch, sized from the prompts and max_new_tokens, and says up front when
    it cannot fit (`memory_needed` is the same arithmetic the memory plan uses);
  * runs each decode step over rows [0, R) and cache slots [0, S_b) only: R is the live row count rounded up to a
    power of two below ROW_STEP rows and to a multiple of ROW_STEP above (`row_bucket`), S_b the current length
    rounded up to a multiple of `slot_bucket`. On CUDA each (R, S_b) step is captured once as a CUDA graph (lazily,
    one shared memory pool) and replayed: one launch per token instead of ~1,000 kernel launches. On CPU, or with
    cuda_graphs=False, the same bucketed step runs eagerly (with R = the live row count), so every CPU test covers it;
  * attends, on CUDA, with the Triton decode kernel (adamame/decode_attention.py): each live row reads only its own
    slots, from its prompt's first token to the new one, and finished or padding rows read nothing, so neither left
    padding, nor bucket slack, nor finished rows cost KV reads (`kv_reads` counts them); SDPA (the CPU path, and
    ADAMAME_KERNELS=torch) reads all R x S_b slots under a bias;
  * never synchronises with the host inside a step: a token is drawn by inverting its row's CDF at a uniform number
    (searchsorted on the device, no multinomial), finished rows are tracked on the device, and the host looks only
    every `check_every` steps, to stop when all rows are done and to drop finished rows ("compaction": live rows
    move down inside the same cache buffers, one layer at a time, so sequences that stopped early stop costing
    work). Every row gets one uniform per step whether it is live or not, so compaction changes no sample;
  * returns the log-probability of every sampled token under the sampling temperature,
    log softmax(z / T)[y], which is what the trainer's forward computes.

Sampling distribution: softmax(z / T), restricted to the top_k tokens and then to the smallest set whose
probability reaches top_p, renormalised. temperature = 0 is greedy (its log-probs are at T = 1).

Imports: torch; adamame: model (KVCache).
"""

import os
import time
from dataclasses import dataclass

import torch

from adamame.model import KVCache

PREFILL_TOKENS = 8192  # prompt tokens per prefill forward (bounds the prefill's activations)
SLOT_BUCKET = 256  # the decode step attends to the cache in multiples of this many slots
ROW_STEP = 64  # above this many live rows, the decode step's rows are rounded up to a multiple of it
COMPACT_AT = 0.75  # finished rows are dropped once the live ones are at most this share of the batch


@dataclass
class Sample:
    tokens: list  # generated ids, without the prompt, with the stop token when one was produced
    finish_reason: str  # "stop" or "length"
    logprobs: list | None = None  # log softmax(z / T)[token] per generated token, when asked for


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniforms=None):
    """One token per row from logits [b, V] (float32); returns (tokens [b], logprobs [b]) without a host sync.

    A row's token is found by inverting its CDF at its uniform number (uniforms: [b] float64 in [0, 1), e.g. from
    torch.rand; drawn here if None), so one random number per row decides the sample and a caller that draws the
    numbers for its rows can make the samples independent of which rows are in the batch.
    """
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


# ---------------------------------------------------------------------------------------------- memory

def sampler_bytes(rows: int, vocab: int, top_k: int = 0, top_p: float = 1.0) -> int:
    """Peak temporaries of one decode step's logits and sample_next for `rows` rows: [rows, V] buffers (the step's
    float32 logits, log-probs, probabilities, and the float64 CDF with the float64 copy of the probabilities that
    cumsum(dtype=float64) makes first), plus top-k's masked copy and top-p's sort (values, int64 order, cumulative
    sums, masks)."""
    per_elem = 3 * 4 + 8 + 8 + (4 if top_k else 0) + (8 + 4 * 5 + 2 if top_p < 1.0 else 0)
    return rows * vocab * per_elem


def layer_transient_bytes(cfg, dtype) -> int:
    """Per token, the largest set of temporaries alive inside one layer's forward without autograd: the MLP's gate,
    up and product, and the attention's q/k/v/o."""
    width = 3 * cfg.intermediate_size + 4 * cfg.hidden_size + 2 * cfg.num_attention_heads * cfg.head_dim
    return width * dtype.itemsize


def step_bytes(cfg, rows: int, dtype) -> int:
    """Activations of one decode step of `rows` rows: one layer's temporaries and the logits before their float32
    copy. Small next to the cache; counted for completeness."""
    return rows * (layer_transient_bytes(cfg, dtype) + cfg.vocab_size * dtype.itemsize)


def prefill_bytes(cfg, tokens: int, prompt_len: int, dtype) -> int:
    """One prefill forward of `tokens` prompt tokens (<= PREFILL_TOKENS): its own cache, one layer's temporaries, the
    bool mask [rows, T, T] and the additive bias of the folded query heads (model.attention_bias: rows x rep x T x
    T rounded up to 16, in the compute dtype)."""
    rows = max(1, tokens // max(1, prompt_len))
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    return (KVCache.nbytes(cfg, rows, prompt_len, dtype) + tokens * layer_transient_bytes(cfg, dtype)
            + rows * prompt_len * prompt_len + rows * rep * prompt_len * (-(-prompt_len // 16) * 16) * dtype.itemsize)


def cache_slots(prompt_len: int, max_new_tokens: int) -> int:
    """Slots of a generate call's KV cache: prompt and response, rounded up to a multiple of 16 so that every decode
    step's bias rows are aligned as the memory-efficient attention kernel needs (else it pads a copy per layer)."""
    return -(-(prompt_len + max_new_tokens) // 16) * 16


def compaction_bytes(cfg, rows: int, slots: int, dtype) -> int:
    """compact's temporary: one layer's K (or V) for the kept rows, at most 3/4 of the rows (it runs when a quarter
    have finished), over every slot."""
    return int(COMPACT_AT * rows) * cfg.num_key_value_heads * slots * cfg.head_dim * dtype.itemsize


def graph_bytes(cfg, rows: int, dtype) -> int:
    """With CUDA graphs: the static float32 logits buffer and the float32 copy a captured step makes into it, and the
    blocks the warm-up run (on the capture stream, outside the graphs' pool) leaves cached there: one step's
    activations and its float32 logits."""
    return 2 * 4 * rows * cfg.vocab_size + step_bytes(cfg, rows, dtype) + 4 * rows * cfg.vocab_size


def memory_needed(cfg, prompts: int, n: int, prompt_len: int, max_new_tokens: int, dtype, top_k=0, top_p=1.0,
                  graphs: bool = False) -> int:
    """Bytes one generate call allocates beyond the weights: KV cache, prefill, one decode step, the sampler,
    compaction's temporary and, with CUDA graphs, their buffers (graph_bytes)."""
    rows, slots = prompts * n, cache_slots(prompt_len, max_new_tokens)
    return (KVCache.nbytes(cfg, rows, slots, dtype)
            + prefill_bytes(cfg, min(prompts * prompt_len, max(PREFILL_TOKENS, prompt_len)), prompt_len, dtype)
            + step_bytes(cfg, rows, dtype) + sampler_bytes(rows, cfg.vocab_size, top_k, top_p)
            + compaction_bytes(cfg, rows, slots, dtype) + (graph_bytes(cfg, rows, dtype) if graphs else 0))


def free_bytes(device) -> int | None:
    """Memory a new allocation can use: on CUDA the driver's free memory plus what PyTorch's allocator holds
    reserved but unallocated (mem_get_info counts that as used); on CPU the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
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


def step_buckets(live: int, slot: int, rows_total: int, slots_total: int, slot_bucket: int, pad_rows: bool,
                 rows_fn=row_bucket) -> tuple:
    """(rows, slots) of the decode step that writes cache `slot` with `live` live rows (Decoder and kv_reads)."""
    rows = min(rows_fn(live), rows_total) if pad_rows else live
    return rows, min(-(-(slot + 1) // slot_bucket) * slot_bucket, slots_total)


class Decoder:
    """The decode step over a static KV cache, eager or as CUDA graphs keyed by (row bucket, slot bucket).

    Static buffers: tokens and positions [B], the slot (0-dim) and, with graphs, the float32 logits [B, V]; a captured
    graph reads and writes only these and the cache, so replaying it after updating them in place is the same as
    calling the model. Graphs share one memory pool (they never run at the same time) and die with the Decoder.
    """

    def __init__(self, model, cache: KVCache, cuda_graphs: bool, slot_bucket: int = SLOT_BUCKET, pad_rows=None):
        self.model, self.cache, self.graphs_on, self.bucket = model, cache, cuda_graphs, slot_bucket
        self.pad_rows = cuda_graphs if pad_rows is None else pad_rows  # eager steps need no padding rows
        B, dev = cache.valid.shape[0], cache.valid.device
        self.tokens = torch.zeros(B, dtype=torch.long, device=dev)
        self.positions = torch.zeros(B, dtype=torch.long, device=dev)
        self.slot = torch.zeros((), dtype=torch.long, device=dev)
        self.active = torch.zeros(B, dtype=torch.bool, device=dev)  # rows whose output is used (the kernel reads them)
        self.logits = torch.zeros(B, model.config.vocab_size, dtype=torch.float32, device=dev) if cuda_graphs else None
        self.graphs, self.pool, self.stream, self.capture_seconds = {}, None, None, 0.0

    def buckets(self, live: int, slot: int) -> tuple:
        return step_buckets(live, slot, *self.cache.valid.shape, self.bucket, self.pad_rows)

    def _run(self, rows, slots):
        return self.model.decode_step(self.tokens, self.positions, self.cache, self.slot, rows, slots,
                                      self.active).float()

    def _run_into_buffer(self, rows, slots):  # what a graph records: outputs must land in a static buffer
        self.logits[:rows] = self._run(rows, slots)

    def _capture(self, rows, slots):
        """Warm up, then capture, on a side stream: what torch.cuda.graph does, minus the full garbage collection
        and empty_cache() it runs before each capture (a rollout captures a few dozen buckets)."""
        graph = torch.cuda.CUDAGraph()
        self.stream = self.stream or torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(self.stream):
            self._run_into_buffer(rows, slots)  # warm-up (it writes the same values the replay will)
            graph.capture_begin(pool=self.pool)
            try:
                self._run_into_buffer(rows, slots)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        self.pool = self.pool or graph.pool()
        return graph

    def __call__(self, tokens, positions, slot: int, active=None) -> torch.Tensor:
        """Logits [live, V] (float32) of the next token of rows [0, live) whose last tokens go to cache `slot`;
        active [live] bool (None: all) marks the rows whose logits are used (others' are garbage)."""
        live = tokens.shape[0]
        rows, slots = self.buckets(live, slot)
        self.tokens[:live] = tokens
        self.positions[:live] = positions
        self.active[live:].fill_(False)
        if active is None:
            self.active[:live].fill_(True)
        else:
            self.active[:live].copy_(active)
        self.slot.fill_(slot)
        if not self.graphs_on:
            return self._run(rows, slots)[:live]
        if (rows, slots) not in self.graphs:
            t0 = time.perf_counter()
            try:
                self.graphs[(rows, slots)] = self._capture(rows, slots)
            except RuntimeError as e:
                raise RuntimeError(f"CUDA graph capture of the decode step ({rows} rows x {slots} slots) failed: "
                                   f"{str(e).strip()[:300]}; ADAMAME_CUDA_GRAPHS=0 runs the same step eagerly") from e
            self.capture_seconds += time.perf_counter() - t0
        self.graphs[(rows, slots)].replay()
        return self.logits[:live]


def graphs_default(device) -> bool:
    """CUDA graphs for the decode step: on for CUDA devices unless ADAMAME_CUDA_GRAPHS=0 (the eager escape hatch)."""
    flag = os.environ.get("ADAMAME_CUDA_GRAPHS", "1")
    if flag not in ("0", "1"):
        raise ValueError(f"ADAMAME_CUDA_GRAPHS={flag!r}: use 0 (eager decode) or 1")
    return torch.device(device).type == "cuda" and flag == "1"


def make_decoder(model, prompts: int, n: int, prompt_len: int, max_new_tokens: int, cuda_graphs=None,
                 slot_bucket: int = SLOT_BUCKET, top_k: int = 0, top_p: float = 1.0) -> Decoder:
    """A KV cache for `prompts` x `n` rows of up to prompt_len + max_new_tokens slots and its decode step, checked
    against the free memory first. Pass it to several generate calls (a rollout's chunks) to capture their CUDA
    graphs once."""
    param = next(model.parameters())
    dev, rows, slots = param.device, prompts * n, cache_slots(prompt_len, max_new_tokens)
    use_graphs = graphs_default(dev) if cuda_graphs is None else bool(cuda_graphs)
    need = memory_needed(model.config, prompts, n, prompt_len, max_new_tokens, param.dtype, top_k, top_p, use_graphs)
    free = free_bytes(dev)
    if free is not None and need > free:
        raise MemoryError(f"generate: {rows} rows x {slots} cache slots need {need / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB free on {dev}: use fewer prompts per call (--rollout-prompts), "
                          f"smaller n or max_new_tokens")
    cache = KVCache.allocate(model.config, rows, slots, param.dtype, dev)
    return Decoder(model, cache, use_graphs, slot_bucket)


def compact(cache: KVCache, keep: torch.Tensor, used_slots: int) -> None:
    """Move cache rows `keep` (ascending indices) to rows [0, len(keep)) in place, one layer at a time, so the extra
    memory is one layer's kept rows (no second cache). Only slots [0, used_slots) hold anything worth moving."""
    n = keep.shape[0]
    for buf in cache.k + cache.v:
        buf[:n, :, :used_slots] = buf[keep, :, :used_slots]
    cache.valid[:n] = cache.valid[keep]


def kv_reads(prompt_lens, response_lens, max_new_tokens, *, kernel: bool, pad_rows: bool = True, check_every=8,
             slot_bucket=SLOT_BUCKET, rows_fn=row_bucket) -> dict:
    """generate's decode schedule replayed without a model: for prompts of `prompt_lens` tokens (one per row) whose
    rows produce `response_lens` tokens (the last one the stop token when < max_new_tokens), the decode steps it
    runs, the (rows, slots) buckets it visits (= CUDA graphs captured), and per step the cache row-slots read: with
    the kernel each active row's own slots (prompt and tokens so far, incl. the new one), with SDPA rows x slots.
    `useful` counts the active rows' own slots (what any exact kernel must read). The same loop as generate: one
    token per step, a host look every check_every steps, compaction at COMPACT_AT; multiply row-slots by the bytes
    of a slot (2 x layers x kv heads x head_dim x itemsize) for bytes."""
    plen, resp = torch.tensor(prompt_lens), torch.tensor(response_lens)
    B, Tp = len(plen), int(plen.max())
    total_slots = cache_slots(Tp, max_new_tokens)
    live, done = torch.arange(B), torch.zeros(B, dtype=torch.bool)
    out = {"steps": 0, "read": 0, "useful": 0, "rows_run": 0, "rows_active": 0, "tokens": int(resp.sum())}
    buckets = set()
    for t in range(max_new_tokens):
        done |= resp[live] <= t + 1  # token t was the row's last
        if t + 1 == max_new_tokens:
            break
        if (t + 1) % check_every == 0:
            n_live = int((~done).sum())
            if n_live == 0:
                break
            if n_live <= COMPACT_AT * len(live):
                live, done = live[~done], done[~done]
        rows, slots = step_buckets(len(live), Tp + t, B, total_slots, slot_bucket, pad_rows, rows_fn)
        buckets.add((rows, slots))
        useful = int((plen[live][~done] + t + 1).sum())
        out["steps"] += 1
        out["useful"] += useful
        out["read"] += useful if kernel else rows * slots
        out["rows_run"] += rows
        out["rows_active"] += int((~done).sum())
    return {**out, "graphs": len(buckets)}


# ---------------------------------------------------------------------------------------------- generate

@dataclass
class Rows:
    """generate's per-call state on the device: per original row the tokens out [B, L], their log-probs out_lp,
    lengths and stopped [B]; per live row (after compaction) its original row `live` and whether it is done."""
    out: torch.Tensor
    out_lp: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor
    live: torch.Tensor
    done: torch.Tensor


def token_step(st: Rows, logits, t: int, gen, temperature, top_k, top_p, eos, pad_token_id) -> torch.Tensor:
    # gen: the call's generator on st's device (None: torch's default one)
    """Token t of every live row from its logits [live, V], and the stop bookkeeping, on the device: no host sync.
    One uniform per original row and step, whether or not the row is still in the batch, so the samples depend
    neither on compaction nor on the buckets. Returns the tokens [live] (pad for rows already done)."""
    B = st.out.shape[0]
    u = torch.rand(B, generator=gen, dtype=torch.float64, device=st.out.device)[st.live] if temperature else None
    tok, lp = sample_next(logits, temperature, top_k, top_p, u)
    tok = torch.where(st.done, pad_token_id, tok)
    st.out[st.live, t], st.out_lp[st.live, t] = tok, lp
    st.lengths[st.live] += (~st.done).long()
    hit = torch.isin(tok, eos) & ~st.done
    st.stopped[st.live] |= hit
    st.done |= hit
    return tok


@torch.no_grad()
def generate(model, prompts, *, max_new_tokens, n=1, temperature=1.0, top_p=1.0, top_k=0, eos_token_ids=(),
             seed=None, return_logprobs=False, check_every=8, pad_token_id=0, cuda_graphs=None,
             slot_bucket=SLOT_BUCKET, stats=None, decoder=None):
    """Sample n continuations of every prompt (lists of token ids, any lengths).

    Returns n * len(prompts) Samples in prompt-major order: all samples of prompt 0, then of prompt 1, ...
    `model` is a plain Transformer (for training, the rollout copy of adamame.dist.rollout_copy). cuda_graphs:
    None = on for CUDA models, off otherwise. A `stats` dict receives the decode steps run, the graphs captured and
    the seconds spent capturing them. `decoder` (make_decoder) reuses a cache and its graphs from an earlier call.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if max_new_tokens < 1 or n < 1:
        raise ValueError(f"max_new_tokens and n must be positive (got {max_new_tokens}, {n})")
    if not (0.0 < top_p <= 1.0) or top_k < 0 or temperature < 0:
        raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}")
    cfg = model.config
    flat = [t for p in prompts for t in p]
    if min(flat) < 0 or max(flat) >= cfg.vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size}), got {min(flat)}..{max(flat)}")
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype
    P, Tp = len(prompts), max(len(p) for p in prompts)
    B, S = P * n, Tp + max_new_tokens
    if decoder is None:
        decoder = make_decoder(model, P, n, Tp, max_new_tokens, cuda_graphs, slot_bucket, top_k, top_p)
    elif decoder.cache.valid.shape[0] < B or decoder.cache.valid.shape[1] < S:
        raise ValueError(f"generate: the decoder's cache holds {tuple(decoder.cache.valid.shape)} rows x slots, "
                         f"this call needs {B} x {S}")
    gen = torch.Generator(dev)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    cache = decoder.cache
    cache.valid.zero_()  # slots of an earlier call are stale: invisible until written again

    # prefill: each distinct prompt once, left-padded, logits only at the last position; its cache rows are
    # copied to its n samples (a broadcasting copy, no repeated tensor)
    logits = torch.empty(P, cfg.vocab_size, dtype=torch.float32, device=dev)
    per = max(1, PREFILL_TOKENS // Tp)
    for a in range(0, P, per):
        chunk = prompts[a:a + per]
        ids = torch.full((len(chunk), Tp), pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), Tp, dtype=torch.bool)
        for i, p in enumerate(chunk):
            ids[i, Tp - len(p):] = torch.tensor(p)
            mask[i, Tp - len(p):] = True
        ids, mask = ids.to(dev), mask.to(dev)
        pre = KVCache.allocate(cfg, len(chunk), Tp, dtype, dev)
        pos = (mask.sum(-1, keepdim=True) - Tp + torch.arange(Tp, device=dev)).clamp(min=0)
        logits[a:a + len(chunk)] = model(ids, positions=pos, mask=mask, cache=pre, logits_at=slice(-1, None))[:, -1]
        rows = slice(a * n, (a + len(chunk)) * n)
        for dst, src in zip(cache.k + cache.v, pre.k + pre.v):
            dst[rows, :, :Tp].unflatten(0, (len(chunk), n)).copy_(src.unsqueeze(1))
        cache.valid[rows, :Tp] = pre.valid.repeat_interleave(n, 0)
        del pre
    logits = logits.repeat_interleave(n, 0)  # [B, V]
    plen = torch.tensor([len(p) for p in prompts], device=dev).repeat_interleave(n, 0)

    eos = torch.tensor(list(eos_token_ids) or [-1], device=dev)
    st = Rows(out=torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=dev),
              out_lp=torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev),
              lengths=torch.zeros(B, dtype=torch.long, device=dev),
              stopped=torch.zeros(B, dtype=torch.bool, device=dev),
              live=torch.arange(B, device=dev), done=torch.zeros(B, dtype=torch.bool, device=dev))
    for t in range(max_new_tokens):
        tok = token_step(st, logits, t, gen, temperature, top_k, top_p, eos, pad_token_id)
        if t + 1 == max_new_tokens:
            break
        if (t + 1) % check_every == 0:  # the only host syncs: stop, or drop finished rows
            n_live = int((~st.done).sum())
            if n_live == 0:
                break
            if n_live <= COMPACT_AT * len(st.live):
                keep = (~st.done).nonzero()[:, 0]
                compact(cache, keep, Tp + t)
                st.live, st.done, tok, plen = st.live[keep], st.done[keep], tok[keep], plen[keep]
        logits = decoder(tok, plen + t, Tp + t, ~st.done)

    if stats is not None:
        stats.update(steps=t + 1, graphs=len(decoder.graphs), capture_seconds=decoder.capture_seconds)
    out, out_lp, lengths, stopped = st.out.cpu(), st.out_lp.cpu(), st.lengths.cpu(), st.stopped.cpu()
    samples = []
    for r in range(B):
        k = int(lengths[r])
        samples.append(Sample(out[r, :k].tolist(), "stop" if stopped[r] else "length",
                              out_lp[r, :k].tolist() if return_logprobs else None))
    return samples
