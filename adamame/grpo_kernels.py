"""Fused token log-probabilities and the GRPO loss: Triton kernels with a plain-PyTorch reference beside them.

Why: with a ~152k vocabulary the [tokens x vocab] logits dominate GRPO memory, and eager PyTorch
(`log_softmax` then `gather`) makes float32 copies of them in the forward and again in the backward. The
Triton path reads the logits once in the forward, keeping only a float32 log-sum-exp per token (online, over
the vocabulary in blocks), and in the backward recomputes the softmax from it and writes d(logits) into the
logits buffer itself:

    log pi(y_k) = z_k[y_k] / T - lse_k,        lse_k = log sum_v exp(z_k[v] / T)
    d z_k[v]    = g_k / T * (1[v = y_k] - exp(z_k[v] / T - lse_k)),    g_k = dL / d log pi(y_k)

The GRPO loss kernel does the same pass and, in the same program, the objective's per-token terms: the PPO clipped
surrogate with the sequence's advantage, the k3 KL to the reference and the clip indicator. Its backward forms
g_k = dL / d log pi(y_k) from the gradients of those terms inside the kernel. With rho_k = exp(log pi - log pi_old):

    pg_k = max(-A rho_k, -A clip(rho_k, 1 - eps_low, 1 + eps_high))
    k3_k = clamp(exp(ref_k - logp_k) - (ref_k - logp_k) - 1, -10, 10)
    dpg_k / dlogp_k = -A rho_k, or 0 where the clip is active
    dk3_k / dlogp_k = 1 - exp(ref_k - logp_k), or 0 at the clamp
    loss = agg(pg) + beta * sum_k m_k k3_k / sum_k m_k
    agg:   dr_grpo     mean_i sum_k m_ik pg_ik / max_tokens      (the paper's setting, max_tokens = 4096)
           token_mean  sum_ik m_ik pg_ik / sum_ik m_ik            (DAPO)
           seq_mean    mean_i sum_k m_ik pg_ik / sum_k m_ik       (original GRPO)

The aggregation and the statistics are sums over [tokens] tensors in PyTorch (`aggregate`), shared by the kernel's
path (`grpo_loss`) and the reference (`policy_loss` on log-probs), so every aggregation is the same code on both.
Liger-Kernel's GRPO loss (ops/grpo_loss.py) is built the same way: per-token loss, KL and clip flag in its forward
kernel, d(logits) from the per-token loss gradient in its backward kernel, the reduction in PyTorch.

Dispatch: CUDA tensors with triton installed run the kernels, anything else the PyTorch reference.
ADAMAME_KERNELS=triton|torch|auto (default auto) forces a path; "triton" on CPU tensors needs TRITON_INTERPRET=1
set before triton is imported. The `*_from_hidden` functions take hidden states and the lm_head weight and work
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


def surrogate_terms_torch(logp, advantages, mask, *, old_logprobs=None, ref_logprobs=None, clip_eps=0.2,
                          clip_eps_high=None):
    """The objective's per-token terms from log-probs logp [B, L] (what the fused kernel computes): (pg, k3, clipped),
    [B, L] each; k3 is None without ref_logprobs. advantages: one per sequence [B], or per token [B, L]."""
    old = logp.detach() if old_logprobs is None else old_logprobs.float()
    # Mask before every exponential: off-response positions may hold anything (a padding log-prob of -89 against a
    # stored 0 makes exp(89) = inf there, and 0 * inf = NaN in the backward even though the loss is finite).
    keep = mask.bool()
    ratio = torch.exp(torch.where(keep, logp - old, 0.0))
    adv = advantages.float()
    adv = adv.unsqueeze(-1) if adv.dim() < logp.dim() else adv
    lo, hi = _clip_range(clip_eps, clip_eps_high)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))
    clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
    k3 = None
    if ref_logprobs is not None:
        d = torch.where(keep, ref_logprobs.float() - logp, 0.0)
        k3 = (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)
    return pg, k3, clipped


def _clip_range(clip_eps, clip_eps_high):
    return 1.0 - clip_eps, 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)


# ---------------------------------------------------------------------------------------------- triton

if triton is not None:

    @triton.jit
    def _row_logp(base, t_ptr, V, inv_temp, BLOCK: tl.constexpr):
        """(log pi of the row's target, the row's log-sum-exp): one read of the row, online over blocks."""
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            z = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        t = tl.minimum(tl.maximum(tl.load(t_ptr), 0), V - 1)
        return tl.load(base + t).to(tl.float32) * inv_temp - lse, lse

    @triton.jit
    def _write_grad(base, gbase, t, g, lse, V, inv_temp, BLOCK: tl.constexpr):
        """d(logits) of the row for g = dL / d log pi(target): g / T (1[v = t] - softmax_v)."""
        g = g * inv_temp
        for start in range(0, V, BLOCK):  # gbase may alias base: each element is read before it is written
            offs = start + tl.arange(0, BLOCK)
            z = tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float32) * inv_temp
            d = g * (tl.where(offs == t, 1.0, 0.0) - tl.exp(z - lse))
            tl.store(gbase + offs, d.to(gbase.dtype.element_ty), mask=offs < V)

    @triton.jit
    def _logprob_fwd_kernel(logits_ptr, stride_b, stride_l, L, targets_ptr, logp_ptr, lse_ptr, V, inv_temp,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        logp, lse = _row_logp(logits_ptr + (row // L) * stride_b + (row % L) * stride_l, targets_ptr + row, V,
                              inv_temp, BLOCK)
        tl.store(logp_ptr + row, logp)
        tl.store(lse_ptr + row, lse)

    @triton.jit
    def _logprob_bwd_kernel(logits_ptr, stride_b, stride_l, grad_ptr, gstride_b, gstride_l, L, targets_ptr,
                            lse_ptr, dlogp_ptr, V, inv_temp, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // L) * stride_b + (row % L) * stride_l
        gbase = grad_ptr + (row // L) * gstride_b + (row % L) * gstride_l
        t = tl.minimum(tl.maximum(tl.load(targets_ptr + row), 0), V - 1)  # as the forward read it
        _write_grad(base, gbase, t, tl.load(dlogp_ptr + row), tl.load(lse_ptr + row), V, inv_temp, BLOCK)

    @triton.jit
    def _surrogate(logp, old, ref, adv, keep, lo, hi, HAS_REF: tl.constexpr):
        """One token's (pg, k3, clipped, dL/dlogp of pg, of k3), as surrogate_terms_torch and its autograd."""
        ratio = tl.exp(tl.where(keep, logp - old, 0.0))  # without pi_old, old is logp: ratio 1, slope 1
        pg = tl.maximum(-adv * ratio, -adv * tl.minimum(tl.maximum(ratio, lo), hi))
        clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
        dpg = tl.where(clipped, 0.0, tl.where(keep, -adv * ratio, 0.0))
        k3 = 0.0
        dk3 = 0.0
        if HAS_REF:
            d = tl.where(keep, ref - logp, 0.0)
            k3_raw = tl.exp(d) - d - 1.0
            k3 = tl.minimum(tl.maximum(k3_raw, -10.0), 10.0)
            dk3 = tl.where(keep & (k3_raw <= 10.0) & (k3_raw >= -10.0), 1.0 - tl.exp(d), 0.0)
        return pg, k3, clipped, dpg, dk3

    @triton.jit
    def _grpo_fwd_kernel(logits_ptr, stride_b, stride_l, L, targets_ptr, adv_ptr, keep_ptr, old_ptr, ref_ptr,
                         logp_ptr, lse_ptr, pg_ptr, k3_ptr, clip_ptr, V, inv_temp, lo, hi,
                         HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        logp, lse = _row_logp(logits_ptr + (row // L) * stride_b + (row % L) * stride_l, targets_ptr + row, V,
                              inv_temp, BLOCK)
        old = tl.load(old_ptr + row) if HAS_OLD else logp
        ref = tl.load(ref_ptr + row) if HAS_REF else logp
        pg, k3, clipped, _, _ = _surrogate(logp, old, ref, tl.load(adv_ptr + row), tl.load(keep_ptr + row) != 0,
                                           lo, hi, HAS_REF)
        tl.store(logp_ptr + row, logp)
        tl.store(lse_ptr + row, lse)
        tl.store(pg_ptr + row, pg)
        tl.store(k3_ptr + row, k3)
        tl.store(clip_ptr + row, clipped.to(tl.int8))

    @triton.jit
    def _grpo_bwd_kernel(logits_ptr, stride_b, stride_l, grad_ptr, gstride_b, gstride_l, L, targets_ptr, adv_ptr,
                         keep_ptr, old_ptr, ref_ptr, lse_ptr, logp_ptr, glogp_ptr, gpg_ptr, gk3_ptr, V, inv_temp, lo,
                         hi, HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, BLOCK: tl.constexpr):
        # log pi comes from the forward, not from the logits: the loop below overwrites them (in place), and with no
        # barrier between a read here and the other warps' writes, a re-read could see a gradient
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // L) * stride_b + (row % L) * stride_l
        gbase = grad_ptr + (row // L) * gstride_b + (row % L) * gstride_l
        lse = tl.load(lse_ptr + row)
        t = tl.minimum(tl.maximum(tl.load(targets_ptr + row), 0), V - 1)  # as the forward read it
        logp = tl.load(logp_ptr + row)
        old = tl.load(old_ptr + row) if HAS_OLD else logp
        ref = tl.load(ref_ptr + row) if HAS_REF else logp
        _, _, _, dpg, dk3 = _surrogate(logp, old, ref, tl.load(adv_ptr + row), tl.load(keep_ptr + row) != 0,
                                       lo, hi, HAS_REF)
        g = tl.load(glogp_ptr + row) + tl.load(gpg_ptr + row) * dpg
        if HAS_REF:
            g += tl.load(gk3_ptr + row) * dk3
        _write_grad(base, gbase, t, g, lse, V, inv_temp, BLOCK)


NUM_WARPS = 8


def _launch(kernel, programs: int, *args, **meta):
    """One program per token; a failure to compile or launch names the escape hatch."""
    try:
        kernel[(programs,)](*args, **meta, BLOCK=BLOCK_V, num_warps=NUM_WARPS)
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


class _TritonGRPO(torch.autograd.Function):
    """(logp, pg, k3, clipped) per token from logits [..., V] in one read; backward writes d(logits) in place."""

    @staticmethod
    def forward(ctx, logits, targets, adv, keep, old, ref, temperature, lo, hi, inplace):
        z = _as_3d(logits)
        B, L, V = z.shape
        tok = [x.reshape(-1).contiguous() for x in (targets, adv.float(), keep.to(torch.int8))]
        old_f, ref_f = (None if x is None else x.reshape(-1).float().contiguous() for x in (old, ref))
        logp, lse, pg, k3 = (torch.empty(B * L, dtype=torch.float32, device=logits.device) for _ in range(4))
        clip = torch.empty(B * L, dtype=torch.int8, device=logits.device)
        if B * L:
            _launch(_grpo_fwd_kernel, B * L, z, z.stride(0), z.stride(1), L, *tok, _or(old_f, logp), _or(ref_f, logp),
                    logp, lse, pg, k3, clip, V, 1.0 / temperature, lo, hi, HAS_OLD=old is not None,
                    HAS_REF=ref is not None)
        ctx.save_for_backward(z, *tok, old_f, ref_f, lse, logp)
        ctx.args, ctx.inplace, ctx.shape = (1.0 / temperature, lo, hi), inplace, logits.shape
        clipped = clip.bool().view(targets.shape)
        ctx.mark_non_differentiable(clipped)
        return logp.view(targets.shape), pg.view(targets.shape), k3.view(targets.shape), clipped

    @staticmethod
    def backward(ctx, g_logp, g_pg, g_k3, _):
        z, tgt, adv, keep, old, ref, lse, logp = ctx.saved_tensors
        B, L, V = z.shape
        grad = z if ctx.inplace else torch.empty_like(z)
        if B * L:
            gs = [g.reshape(-1).float().contiguous() for g in (g_logp, g_pg, g_k3)]
            _launch(_grpo_bwd_kernel, B * L, z, z.stride(0), z.stride(1), grad, grad.stride(0), grad.stride(1), L, tgt,
                    adv, keep, _or(old, lse), _or(ref, lse), lse, logp, *gs, V, *ctx.args, HAS_OLD=old is not None,
                    HAS_REF=ref is not None)
        return grad.view(ctx.shape), *([None] * 9)


def _or(x, other):
    return other if x is None else x


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


def grpo_terms(logits, targets, advantages, mask, *, old_logprobs=None, ref_logprobs=None, temperature=1.0,
               clip_eps=0.2, clip_eps_high=None, inplace=True):
    """The objective's per-token terms straight from logits [..., V]: (logp, pg, k3, clipped), each shaped like
    targets (k3 None without ref_logprobs). advantages: one per sequence (targets.shape[:-1]) or per token.

    On the Triton path one kernel reads each row of logits once for all four, and the backward forms dL/dlogp from
    the gradients of logp, pg and k3 and writes d(logits) into `logits` when `inplace`. Elsewhere: token_logprobs
    then surrogate_terms_torch."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not _use_triton(logits):
        logp = token_logprobs_torch(logits, targets, temperature)
        return (logp, *surrogate_terms_torch(logp, advantages, mask, old_logprobs=old_logprobs,
                                             ref_logprobs=ref_logprobs, clip_eps=clip_eps, clip_eps_high=clip_eps_high))
    adv = advantages.float()
    adv = (adv.unsqueeze(-1) if adv.dim() < targets.dim() else adv).expand(targets.shape)
    logp, pg, k3, clipped = _TritonGRPO.apply(logits, targets, adv, mask.expand(targets.shape), old_logprobs,
                                              ref_logprobs, float(temperature), *_clip_range(clip_eps, clip_eps_high),
                                              inplace)
    return logp, pg, (k3 if ref_logprobs is not None else None), clipped


# ---------------------------------------------------------------------------------------------- chunked (hidden)

class _Chunked(torch.autograd.Function):
    """fn(hidden @ weight.T, *token inputs) for hidden h [N, C] and the lm_head weight W [V, C], `chunk` tokens at a
    time; fn returns a tuple of [n] tensors (None allowed). Forward keeps only those; backward recomputes each chunk's
    logits, turns them into d(logits) in place (fn's own backward) and accumulates dh = dz W and dW = dz^T h.
    Peak extra memory: one [chunk x V] logits block."""

    @staticmethod
    def forward(ctx, hidden, weight, fn, chunk, *inputs):
        N, outs = hidden.shape[0], None
        with torch.no_grad():
            for s in range(0, N, chunk):
                part = fn(hidden[s:s + chunk] @ weight.t(), *(None if x is None else x[s:s + chunk] for x in inputs))
                if outs is None:
                    outs = [None if o is None else o.new_empty((N,)) for o in part]
                for o, p in zip(outs, part):
                    if o is not None:
                        o[s:s + chunk] = p
        outs = outs or [None] * len(fn(hidden[:0] @ weight.t(), *(None if x is None else x[:0] for x in inputs)))
        ctx.save_for_backward(hidden, weight, *inputs)
        ctx.fn, ctx.chunk = fn, chunk
        ctx.mark_non_differentiable(*(o for o in outs if o is not None and not o.is_floating_point()))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        hidden, weight, *inputs = ctx.saved_tensors
        dh = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            with torch.enable_grad():
                z = (h @ weight.t()).detach().requires_grad_(True)
                part = ctx.fn(z, *(None if x is None else x[s:s + ctx.chunk] for x in inputs))
                pairs = [(o, g[s:s + ctx.chunk]) for o, g in zip(part, grads)
                         if o is not None and o.requires_grad and g is not None]
                (dz,) = torch.autograd.grad([o for o, _ in pairs], z, [g for _, g in pairs])
            if dh is not None:
                dh[s:s + ctx.chunk] = dz @ weight
            if dw is not None:
                dw += (dz.t() @ h).float()
        return dh, (dw.to(weight.dtype) if dw is not None else None), None, None, *([None] * len(inputs))


def _from_hidden(fn, hidden, weight, targets, chunk_tokens, *inputs):
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    flat = [None if x is None else x.reshape(-1) for x in inputs]
    outs = _Chunked.apply(hidden.reshape(-1, hidden.shape[-1]), weight, fn, int(chunk_tokens), targets.reshape(-1),
                          *flat)
    return [None if o is None else o.view(targets.shape) for o in outs]


def token_logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0, chunk_tokens: int = 4096) -> torch.Tensor:
    """Like token_logprobs(hidden @ weight.T, targets), without materialising all the logits at once.

    hidden [..., C], weight [V, C], targets [...] -> float32 [...].
    """
    def fn(z, t):
        return (token_logprobs(z, t, temperature, inplace=True),)
    return _from_hidden(fn, hidden, weight, targets, chunk_tokens)[0]


def grpo_terms_from_hidden(hidden, weight, targets, advantages, mask, *, old_logprobs=None, ref_logprobs=None,
                           temperature=1.0, clip_eps=0.2, clip_eps_high=None, chunk_tokens=4096):
    """Like grpo_terms(hidden @ weight.T, ...), chunk_tokens logits at a time. advantages: per token here."""
    def fn(z, t, adv, keep, old, ref):
        return grpo_terms(z, t, adv, keep, old_logprobs=old, ref_logprobs=ref, temperature=temperature,
                          clip_eps=clip_eps, clip_eps_high=clip_eps_high, inplace=True)
    adv = advantages.float()
    adv = (adv.unsqueeze(-1) if adv.dim() < targets.dim() else adv).expand(targets.shape)
    return _from_hidden(fn, hidden, weight, targets, chunk_tokens, adv, mask.expand(targets.shape), old_logprobs,
                        ref_logprobs)


# ---------------------------------------------------------------------------------------------- loss

def aggregate(logp, pg, k3, clipped, mask, *, old_logprobs=None, beta=0.001, aggregation="dr_grpo", max_tokens=4096,
              num_seqs=None, num_tokens=None):
    """(loss, stats) from the per-token terms [B, L] (see the module docstring); k3 None: no reference.

    Every default is the paper's: beta = 0.001 (so a call without a reference is an error unless it passes beta=0:
    the KL term cannot be dropped silently) and the Dr. GRPO normaliser max_tokens = 4096, its response limit (None:
    the padded length L). stats {"clip_frac", "kl", "ratio"}: detached 0-dim tensors over valid tokens (no host
    synchronisation). `num_seqs` / `num_tokens` replace the local sequence and valid-token counts in every mean (loss
    and stats): a trainer that splits a mini-batch into micro-batches and ranks passes the whole mini-batch's counts,
    so the sum of the pieces is exactly the loss of the whole.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")
    if beta and k3 is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    m = mask.to(pg.dtype)
    n_valid = float(num_tokens) if num_tokens is not None else m.sum().clamp(min=1.0)
    n_seqs = float(num_seqs) if num_seqs is not None else pg.shape[0]
    if aggregation == "dr_grpo":
        loss = ((pg * m).sum(-1) / float(max_tokens or pg.shape[-1])).sum() / n_seqs
    elif aggregation == "token_mean":
        loss = (pg * m).sum() / n_valid
    else:
        loss = ((pg * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / n_seqs
    kl = torch.zeros((), device=pg.device)
    if k3 is not None:
        kl = (k3 * m).sum() / n_valid
        if beta:
            loss = loss + beta * kl
    with torch.no_grad():
        ratio = torch.ones_like(m) if old_logprobs is None else \
            torch.exp(torch.where(mask.bool(), logp - old_logprobs.float(), 0.0))
        stats = {"clip_frac": (clipped.float() * m).sum() / n_valid, "kl": kl.detach(),
                 "ratio": (ratio * m).sum() / n_valid}
    return loss, stats


def _split(kw):
    """policy_loss's keyword arguments -> (those of the per-token terms, those of the aggregation)."""
    terms = {k: kw.pop(k) for k in ("old_logprobs", "ref_logprobs", "clip_eps", "clip_eps_high") if k in kw}
    return terms, dict(kw, old_logprobs=terms.get("old_logprobs"))


def policy_loss(logp, advantages, mask, *, old_logprobs=None, ref_logprobs=None, clip_eps=0.2, clip_eps_high=None,
                beta=0.001, aggregation="dr_grpo", max_tokens=4096, num_seqs=None, num_tokens=None):
    """The GRPO objective on per-token log-probs logp [B, L]: the PyTorch reference of the fused loss, (loss, stats).

    Without old_logprobs the ratio is exactly 1 and the gradient is that of A * logp; clip_eps_high None: clip_eps.
    The rest are `aggregate`'s (the paper's defaults)."""
    pg, k3, clipped = surrogate_terms_torch(logp, advantages, mask, old_logprobs=old_logprobs,
                                            ref_logprobs=ref_logprobs, clip_eps=clip_eps, clip_eps_high=clip_eps_high)
    return aggregate(logp, pg, k3, clipped, mask, old_logprobs=old_logprobs, beta=beta, aggregation=aggregation,
                     max_tokens=max_tokens, num_seqs=num_seqs, num_tokens=num_tokens)


def grpo_loss(logits, targets, advantages, mask, *, temperature=1.0, inplace=True, **kw):
    """GRPO loss from logits [B, L, V], targets and mask [B, L], advantages [B]; returns (loss, stats). The fused
    kernel on the Triton path. Keyword arguments are those of `policy_loss`."""
    terms, agg = _split(kw)
    logp, pg, k3, clipped = grpo_terms(logits, targets, advantages, mask, temperature=temperature, inplace=inplace,
                                       **terms)
    return aggregate(logp, pg, k3, clipped, mask, **agg)


def grpo_loss_torch(logits, targets, advantages, mask, **kw):
    """The reference: the same loss with eager PyTorch log-probs (materialises float32 [B, L, V] copies)."""
    kw.pop("inplace", None)
    temperature = kw.pop("temperature", 1.0)
    return policy_loss(token_logprobs_torch(logits, targets, temperature), advantages, mask, **kw)


def grpo_loss_from_hidden(hidden, weight, targets, advantages, mask, *, temperature=1.0, chunk_tokens=4096, **kw):
    """GRPO loss from hidden states [B, L, C] and the lm_head weight [V, C], chunk_tokens logits at a time."""
    terms, agg = _split(kw)
    logp, pg, k3, clipped = grpo_terms_from_hidden(hidden, weight, targets, advantages, mask, temperature=temperature,
                                                   chunk_tokens=chunk_tokens, **terms)
    return aggregate(logp, pg, k3, clipped, mask, **agg)
