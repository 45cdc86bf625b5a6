"""Fused token log-probabilities and the GRPO loss: Triton kernels with a plain-PyTorch reference beside them.

Why: with a ~152k vocabulary the [tokens x vocab] logits dominate GRPO memory, and eager PyTorch
(`log_softmax` then `gather`) makes float32 copies of them in the forward and again in the backward. The
Triton path reads the logits once in the forward, keeping only a float32 log-sum-exp per token (online, over
the vocabulary in blocks), and in the backward recomputes the softmax from it and writes d(logits) into the
logits buffer itself:

    log pi(y_k) = z_k[y_k] / T - lse_k,        lse_k = log sum_v exp(z_k[v] / T)
    d z_k[v]    = g_k / T * (1[v = y_k] - exp(z_k[v] / T - lse_k)),    g_k = dL / d log pi(y_k)

Everything after the log-probabilities lives on [tokens] tensors and stays in PyTorch (`policy_loss`), as in
Liger-Kernel's GRPO loss: the PPO clipped surrogate with per-sequence advantages, the k3 KL to the reference,
the aggregation, and the statistics, at no extra pass over the vocabulary. With rho_k = exp(log pi - log pi_old):

    pg_k = max(-A rho_k, -A clip(rho_k, 1 - eps_low, 1 + eps_high))
    k3_k = clamp(exp(ref_k - logp_k) - (ref_k - logp_k) - 1, -10, 10)
    loss = agg(pg) + beta * sum_k m_k k3_k / sum_k m_k
    agg:   dr_grpo     mean_i sum_k m_ik pg_ik / max_tokens      (the paper's setting, max_tokens = 4096)
           token_mean  sum_ik m_ik pg_ik / sum_ik m_ik            (DAPO)
           seq_mean    mean_i sum_k m_ik pg_ik / sum_k m_ik       (original GRPO)

Dispatch: CUDA tensors with triton installed run the kernels, anything else the PyTorch reference.
ADAMAME_KERNELS=triton|torch|auto (default auto) forces a path; "triton" on CPU tensors needs TRITON_INTERPRET=1
set before triton is imported. `token_logprobs_from_hidden` takes hidden states and the lm_head weight and works
through the tokens in chunks, so the whole [tokens x vocab] logits never exist at once.

Note: the Triton backward overwrites the logits tensor with its gradient (inplace=True, the default). Do not
read the logits after backward; pass inplace=False to get a separate gradient buffer.

Imports: torch, triton (optional).
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch reference still works
    triton = None

AGGREGATIONS = ("dr_grpo", "token_mean", "seq_mean")
BLOCK_V = 4096


# ---------------------------------------------------------------------------------------------- reference

def token_logprobs_torch(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] in float32: logits [..., V], targets [...] -> [...]."""
    z = logits.float() / temperature
    return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


# ---------------------------------------------------------------------------------------------- triton

if triton is not None:

    @triton.jit
    def _logprob_fwd_kernel(logits_ptr, stride_b, stride_l, L, targets_ptr, logp_ptr, lse_ptr, V, inv_temp,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // L) * stride_b + (row % L) * stride_l
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, V, BLOCK):  # online log-sum-exp: one read of the row
            offs = start + tl.arange(0, BLOCK)
            z = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        t = tl.minimum(tl.maximum(tl.load(targets_ptr + row), 0), V - 1)
        z_t = tl.load(base + t).to(tl.float32) * inv_temp
        tl.store(logp_ptr + row, z_t - lse)
        tl.store(lse_ptr + row, lse)

    @triton.jit
    def _logprob_bwd_kernel(logits_ptr, stride_b, stride_l, grad_ptr, gstride_b, gstride_l, L, targets_ptr,
                            lse_ptr, dlogp_ptr, V, inv_temp, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // L) * stride_b + (row % L) * stride_l
        gbase = grad_ptr + (row // L) * gstride_b + (row % L) * gstride_l
        g = tl.load(dlogp_ptr + row) * inv_temp
        lse = tl.load(lse_ptr + row)
        t = tl.load(targets_ptr + row)
        for start in range(0, V, BLOCK):  # grad may alias logits: each element is read before it is written
            offs = start + tl.arange(0, BLOCK)
            z = tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float32) * inv_temp
            d = g * (tl.where(offs == t, 1.0, 0.0) - tl.exp(z - lse))
            tl.store(gbase + offs, d.to(gbase.dtype.element_ty), mask=offs < V)


NUM_WARPS = 8


def _launch(kernel, programs: int, *args):
    """One program per token; a failure to compile or launch names the escape hatch."""
    try:
        kernel[(programs,)](*args, BLOCK=BLOCK_V, num_warps=NUM_WARPS)
    except Exception as e:  # noqa: BLE001  (triton raises its own compilation, resource and driver errors)
        raise RuntimeError(f"Triton kernel {kernel.fn.__name__} failed ({type(e).__name__}: {str(e).strip()[:300]}); "
                           f"ADAMAME_KERNELS=torch runs the PyTorch reference instead") from e


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [B, L, V] as a view where possible (a sliced [B, L, V] keeps its strides, no copy)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    return x.reshape(-1, x.shape[-2], x.shape[-1])


class _TritonLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, inplace):
        z = _as_3d(logits)
        B, L, V = z.shape
        tgt = targets.reshape(-1).contiguous()
        logp = torch.empty(B * L, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        if B * L:
            _launch(_logprob_fwd_kernel, B * L, z, z.stride(0), z.stride(1), L, tgt, logp, lse, V, 1.0 / temperature)
        ctx.save_for_backward(z, tgt, lse)
        ctx.temperature, ctx.inplace, ctx.shape = temperature, inplace, logits.shape
        return logp.view(targets.shape)

    @staticmethod
    def backward(ctx, dlogp):
        z, tgt, lse = ctx.saved_tensors
        B, L, V = z.shape
        grad = z if ctx.inplace else torch.empty_like(z)
        if B * L:
            _launch(_logprob_bwd_kernel, B * L, z, z.stride(0), z.stride(1), grad, grad.stride(0), grad.stride(1), L,
                    tgt, lse, dlogp.reshape(-1).float().contiguous(), V, 1.0 / ctx.temperature)
        return grad.view(ctx.shape), None, None, None


def _use_triton(x: torch.Tensor) -> bool:
    mode = os.environ.get("ADAMAME_KERNELS", "auto")
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"ADAMAME_KERNELS={mode!r}: use triton, torch or auto")
    if mode == "torch":
        return False
    if mode == "triton":
        if triton is None:
            raise RuntimeError("ADAMAME_KERNELS=triton but triton is not installed")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("ADAMAME_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 set before import")
        return True
    return triton is not None and x.is_cuda


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   inplace: bool = True) -> torch.Tensor:
    """float32 log-probabilities of `targets` under softmax(logits / temperature).

    logits [..., V] (float32 or bfloat16, any V), targets [...] (int64, in [0, V)) -> [...]. Differentiable.
    On the Triton path the backward writes d(logits) into `logits` when `inplace` (the default).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if _use_triton(logits):
        return _TritonLogProb.apply(logits, targets, float(temperature), inplace)
    return token_logprobs_torch(logits, targets, temperature)


# ---------------------------------------------------------------------------------------------- chunked (hidden)

class _ChunkedLogProb(torch.autograd.Function):
    """log-probs from hidden states h [N, C] and the lm_head weight W [V, C], `chunk` tokens at a time.

    Forward keeps only [N] floats; backward recomputes each chunk's logits, turns them into d(logits) in place
    and accumulates dh = dz W and dW = dz^T h. Peak extra memory: one [chunk x V] logits block.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for s in range(0, hidden.shape[0], chunk):
                z = hidden[s:s + chunk] @ weight.t()
                out[s:s + chunk] = token_logprobs(z, targets[s:s + chunk], temperature)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, dlogp):
        hidden, weight, targets = ctx.saved_tensors
        dh = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            with torch.enable_grad():
                z = (h @ weight.t()).detach().requires_grad_(True)
                lp = token_logprobs(z, targets[s:s + ctx.chunk], ctx.temperature, inplace=True)
                (dz,) = torch.autograd.grad(lp, z, dlogp[s:s + ctx.chunk])
            if dh is not None:
                dh[s:s + ctx.chunk] = dz @ weight
            if dw is not None:
                dw += (dz.t() @ h).float()
        return dh, (dw.to(weight.dtype) if dw is not None else None), None, None, None


def token_logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0, chunk_tokens: int = 4096) -> torch.Tensor:
    """Like token_logprobs(hidden @ weight.T, targets), without materialising all the logits at once.

    hidden [..., C], weight [V, C], targets [...] -> float32 [...].
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    flat = _ChunkedLogProb.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                 float(temperature), int(chunk_tokens))
    return flat.view(targets.shape)


# ---------------------------------------------------------------------------------------------- loss

def policy_loss(logp, advantages, mask, *, old_logprobs=None, ref_logprobs=None, clip_eps=0.2, clip_eps_high=None,
                beta=0.001, aggregation="dr_grpo", max_tokens=4096, num_seqs=None, num_tokens=None):
    """The GRPO objective on per-token log-probs logp [B, L] (see the module docstring).

    Every default is the paper's: beta = 0.001 (so a call without ref_logprobs is an error unless it passes beta=0:
    the KL term cannot be dropped silently) and the Dr. GRPO normaliser max_tokens = 4096, its response limit (None:
    the padded length L).

    Returns (loss, stats) with stats {"clip_frac", "kl", "ratio"}: detached 0-dim tensors over valid tokens
    (no host synchronisation). Without old_logprobs the ratio is exactly 1 and the gradient is that of A * logp.
    `num_seqs` / `num_tokens` replace the local sequence and valid-token counts in every mean (loss and stats):
    a trainer that splits a mini-batch into micro-batches and ranks passes the whole mini-batch's counts, so the
    sum of the pieces is exactly the loss of the whole.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")
    m = mask.to(logp.dtype)
    n_valid = float(num_tokens) if num_tokens is not None else m.sum().clamp(min=1.0)
    n_seqs = float(num_seqs) if num_seqs is not None else logp.shape[0]
    old = logp.detach() if old_logprobs is None else old_logprobs.float()
    # Mask before every exponential: off-response positions may hold anything (a padding log-prob of -89 against a
    # stored 0 makes exp(89) = inf there, and 0 * inf = NaN in the backward even though the loss is finite).
    keep = mask.bool()
    ratio = torch.exp(torch.where(keep, logp - old, 0.0))
    adv = advantages.float().unsqueeze(-1)
    lo, hi = 1.0 - clip_eps, 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))
    if aggregation == "dr_grpo":
        pg_loss = ((pg * m).sum(-1) / float(max_tokens or logp.shape[-1])).sum() / n_seqs
    elif aggregation == "token_mean":
        pg_loss = (pg * m).sum() / n_valid
    else:
        pg_loss = ((pg * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / n_seqs
    loss = pg_loss
    kl = torch.zeros((), device=logp.device)
    if ref_logprobs is not None:
        d = torch.where(keep, ref_logprobs.float() - logp, 0.0)
        k3 = (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)
        kl = (k3 * m).sum() / n_valid
        if beta:
            loss = loss + beta * kl
    elif beta:
        raise ValueError("beta > 0 needs ref_logprobs")
    with torch.no_grad():
        clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
        stats = {"clip_frac": (clipped.float() * m).sum() / n_valid, "kl": kl.detach(),
                 "ratio": (ratio * m).sum() / n_valid}
    return loss, stats


def grpo_loss(logits, targets, advantages, mask, *, temperature=1.0, inplace=True, **kw):
    """GRPO loss from logits [B, L, V], targets and mask [B, L], advantages [B]; returns (loss, stats).

    Keyword arguments are those of `policy_loss` (old_logprobs, ref_logprobs, clip_eps, clip_eps_high, beta,
    aggregation, max_tokens, num_seqs, num_tokens)."""
    logp = token_logprobs(logits, targets, temperature, inplace=inplace)
    return policy_loss(logp, advantages, mask, **kw)


def grpo_loss_torch(logits, targets, advantages, mask, **kw):
    """The reference: the same loss with eager PyTorch log-probs (materialises float32 [B, L, V] copies)."""
    kw.pop("inplace", None)
    temperature = kw.pop("temperature", 1.0)
    return policy_loss(token_logprobs_torch(logits, targets, temperature), advantages, mask, **kw)


def grpo_loss_from_hidden(hidden, weight, targets, advantages, mask, *, temperature=1.0, chunk_tokens=4096, **kw):
    """GRPO loss from hidden states [B, L, C] and the lm_head weight [V, C], chunk_tokens logits at a time."""
    logp = token_logprobs_from_hidden(hidden, weight, targets, temperature, chunk_tokens)
    return policy_loss(logp, advantages, mask, **kw)
