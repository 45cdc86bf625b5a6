"""Batched sampling with a static KV cache: the rollout engine for GRPO and evaluation.

Why this shape: in GRPO, generation is most of the wall time. The engine therefore
  * prefills each distinct prompt once (left-padded, one batched forward) and copies its cache rows to its n
    samples, instead of recomputing the prompt per sample (GRPO draws n = 8 per prompt);
  * preallocates one KV cache for the whole batch, sized from the prompts and max_new_tokens, and says up
    front when it cannot fit;
  * never synchronises with the host inside a step: on CUDA tokens are sampled as argmax(p / Exp(1)) (a sample
    from p, as in gpt-fast), finished rows are tracked on the device, and the host looks only every
    `check_every` steps, to stop when all rows are done and to drop finished rows from the batch
    ("compaction"), so sequences that stopped early stop costing work;
  * optionally runs the decode step through torch.compile(mode="reduce-overhead") on CUDA, which captures it
    as a CUDA graph (static batch, attention over the whole cache);
  * returns the log-probability of every sampled token under the sampling temperature,
    log softmax(z / T)[y], which is what the trainer's forward computes, so GRPO can use it as pi_old.

Sampling distribution: softmax(z / T), restricted to the top_k tokens and then to the smallest set whose
probability reaches top_p, renormalised. temperature = 0 is greedy (its log-probs are at T = 1).

Imports: torch, adamame.model (KVCache).
"""

import os
from dataclasses import dataclass

import torch

from adamame.model import KVCache


@dataclass
class Sample:
    tokens: list  # generated ids, without the prompt, with the stop token when one was produced
    finish_reason: str  # "stop" or "length"
    logprobs: list | None = None  # log softmax(z / T)[token] per generated token, when asked for


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """One token per row from logits [b, V] (float32); returns (tokens [b], logprobs [b]) without a host sync."""
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
    if probs.is_cuda:  # argmax(p / Exp(1)) is a sample from p, with no host sync (multinomial would sync)
        tok = (probs / torch.empty_like(probs).exponential_(1.0, generator=generator)).argmax(-1)
    else:  # on CPU exponential_ (and multinomial, built on it) is slow: invert the CDF, one number per row
        cdf = probs.cumsum(-1, dtype=torch.float64)
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
        tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _free_bytes(device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def generate(model, prompts, *, max_new_tokens, n=1, temperature=1.0, top_p=1.0, top_k=0, eos_token_ids=(),
             seed=None, return_logprobs=False, check_every=8, compile=False, pad_token_id=0):
    """Sample n continuations of every prompt (lists of token ids, any lengths).

    Returns n * len(prompts) Samples in prompt-major order: all samples of prompt 0, then of prompt 1, ...
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
    need = KVCache.nbytes(cfg, B, S, dtype) + KVCache.nbytes(cfg, P, Tp, dtype) + 3 * B * cfg.vocab_size * 4
    free = _free_bytes(dev)
    if free is not None and need > free:
        raise MemoryError(f"generate: the KV cache for {B} rows x {S} slots needs {need / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB free on {dev}: use fewer prompts per call, smaller n or "
                          f"max_new_tokens")
    gen = torch.Generator(dev).manual_seed(seed) if seed is not None else None

    # prefill: each distinct prompt once, left-padded, logits only at the last position
    ids = torch.full((P, Tp), pad_token_id, dtype=torch.long)
    mask = torch.zeros(P, Tp, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, Tp - len(p):] = torch.tensor(p)
        mask[i, Tp - len(p):] = True
    ids, mask = ids.to(dev), mask.to(dev)
    plen = mask.sum(-1)
    pre = KVCache.allocate(cfg, P, Tp, dtype, dev)
    logits = model(ids, positions=(plen[:, None] - Tp + torch.arange(Tp, device=dev)).clamp(min=0), mask=mask,
                   cache=pre, start=0, logits_slice=slice(-1, None))[:, -1].float().repeat_interleave(n, 0)  # [B, V]
    cache = KVCache.allocate(cfg, B, S, dtype, dev)
    for layer in range(cfg.num_hidden_layers):  # share each prompt's cache rows with its n samples
        cache.k[layer][:, :, :Tp] = pre.k[layer].repeat_interleave(n, 0)
        cache.v[layer][:, :, :Tp] = pre.v[layer].repeat_interleave(n, 0)
    cache.valid[:, :Tp] = pre.valid.repeat_interleave(n, 0)
    del pre
    plen = plen.repeat_interleave(n, 0)

    def step(tok, pos, start):
        return model(tok[:, None], positions=pos[:, None], cache=cache, start=start)[:, -1].float()

    step_fn = torch.compile(step, mode="reduce-overhead", dynamic=False) if compile else step
    eos = torch.tensor(list(eos_token_ids) or [-1], device=dev)
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
    out_lp = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
    lengths = torch.zeros(B, dtype=torch.long, device=dev)
    stopped = torch.zeros(B, dtype=torch.bool, device=dev)
    live = torch.arange(B, device=dev)  # original row of each row still in the batch
    slot = torch.tensor(Tp, device=dev)  # compiled path: the cache slot as a device tensor, advanced in place
    done = torch.zeros(B, dtype=torch.bool, device=dev)  # per live row

    for t in range(max_new_tokens):
        tok, lp = sample_next(logits, temperature, top_k, top_p, gen)
        tok = torch.where(done, pad_token_id, tok)
        out[live, t], out_lp[live, t] = tok, lp
        lengths[live] += (~done).long()
        hit = torch.isin(tok, eos) & ~done
        stopped[live] |= hit
        done |= hit
        if t + 1 == max_new_tokens:
            break
        if (t + 1) % check_every == 0:  # the only host syncs: stop, or drop finished rows
            n_live = int((~done).sum())
            if n_live == 0:
                break
            if not compile and n_live <= 0.75 * len(live):
                keep = (~done).nonzero()[:, 0]
                live, done, tok, plen = live[keep], done[keep], tok[keep], plen[keep]
                cache = KVCache([k[keep] for k in cache.k], [v[keep] for v in cache.v], cache.valid[keep])
        logits = step_fn(tok, plen + t, slot if compile else Tp + t)
        slot += 1

    out, out_lp, lengths, stopped = out.cpu(), out_lp.cpu(), lengths.cpu(), stopped.cpu()
    samples = []
    for r in range(B):
        k = int(lengths[r])
        samples.append(Sample(out[r, :k].tolist(), "stop" if stopped[r] else "length",
                              out_lp[r, :k].tolist() if return_logprobs else None))
    return samples
