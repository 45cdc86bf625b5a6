"""Fused layer kernels: RMSNorm with the residual add, rotary (with the cache write in decode), SiLU * up; in
training each with a backward kernel.

Why: a decode step reads ~3 GB of weights for a few hundred rows, so its non-GEMM work is a few MB per kernel, and
what it costs is the kernels' count: each launch in a CUDA graph still costs a floor of microseconds. Written as
PyTorch ops, RMSNorm alone is 8 kernels (to-float, pow, mean, add, rsqrt, mul, to, mul) and rotary ~10; here each
is one Triton kernel over the [rows, features] activations of one token per row:

    add_rmsnorm(x, r, w):  s = x + r (rounded to the model's dtype: the new residual);
                           out = w * (s / sqrt(mean(s^2) + eps)), normalised in float32 and cast before the weight
    rmsnorm(x, w):         the same without the add (the first layer: the embedding is the residual)
    rope_cache(q, k, v):   per head (Qwen3: RMSNorm of q and k per head first), rope(x) = x cos + rotate_half(x) sin
                           with (cos, sin) of position * inv_freq computed in float32 inside the kernel; q is
                           returned as [rows, heads, head_dim], k and v written into the KV cache at each row's slot
    silu_mul(g, u):        silu(g) * u

Every rounding happens where the PyTorch model (adamame/model.py) rounds, in the same order (each product of the
rotary rounded to the model's dtype, as a bf16 tensor product is), so the kernels equal their references within
float32 rounding, and within bf16's in bf16. Each `*_torch` function is that reference: the spec the tests hold the
kernel to, and what the op computes where the kernel cannot run. Each op is registered with torch.library
(`adamame::rmsnorm`, ...) so that op recorders and the meta device see one op, and each launches exactly one
kernel. The decode step takes them together with the decode-attention kernel (adamame/model.py, its switch
ADAMAME_KERNELS); an op whose kernel cannot run (no triton; CPU tensors outside TRITON_INTERPRET=1) computes its
reference.

Training (the model's forward on CUDA, prefill too) runs rmsnorm, add_rmsnorm, silu_mul and `rope` (rotary from the
model's cos / sin tables, no cache) with a backward registered for autograd. Why: over a 32k-token micro-batch these
ops are memory-bound, and PyTorch runs RMSNorm as 8 kernels forward and more backward, each a pass over float32
copies; a layer's activations are also what decides whether the update needs activation checkpointing (a second
forward). Each backward recomputes what is cheap (1/rms, silu(gate), the rotation) instead of saving it:

    rmsnorm:      y = w * (x r),  r = 1 / sqrt(mean(x^2) + eps):
                  dx = r (g - x r mean(g x r)),  g = dy * w;   dw = sum over rows of dy * (x r)   (saves x)
    add_rmsnorm:  the same on s = x + residual, plus d(s) from the residual stream, to both inputs   (saves s)
    silu_mul:     d gate = d(silu) sig (1 + gate (1 - sig)), d(silu) = dh * up;  d up = dh * silu(gate)   (saves both)
    rope:         the transpose of a rotation is the rotation by -angle: the same kernel with -sin   (saves nothing)

Imports: torch, triton (optional).
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

NUM_WARPS = 8  # rmsnorm and silu_mul: a row of 1,536-2,560 (or a block of 1,024) over 256 threads
ROPE_WARPS = 1  # rope_cache: a program rotates one head, two halves of 64 values
SILU_BLOCK = 1024  # intermediate features per program of silu_mul


def _kernel_runs(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _norm_warps(block: int, most: int = NUM_WARPS) -> int:
    """rmsnorm's warps: 8 for the hidden size (blocks of 2,048 or more; its backward, which holds more per value, up
    to 16), fewer for a head (a block of 128: 1 warp, 4 values a thread) so every thread loads a vector."""
    return max(1, min(most, block // 256))


# ---------------------------------------------------------------------------------------------- the references

def rmsnorm_torch(x, weight, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rmsnorm_torch(x, residual, weight, eps):
    s = x + residual
    return rmsnorm_torch(s, weight, eps), s


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cache_torch(q, k, v, positions, slot, table, inv_freq, k_cache, v_cache, q_norm, k_norm, eps, block=32):
    """q [R, H * D], k, v [R, KV * D] (unit last stride), positions and slot [R] int64, table [R, W] int32 (a paged
    cache's block table), inv_freq [D / 2] float32, k_cache / v_cache [P, KV, D] (the pool); q_norm, k_norm [D] or
    None. Writes row r's k and v at pool slot table[r, slot[r] // block] * block + slot[r] % block; returns q roped,
    [R, H, D] contiguous."""
    R, D = q.shape[0], k_cache.shape[-1]
    q, k, v = q.reshape(R, -1, D), k.reshape(R, -1, D), v.reshape(R, -1, D)
    if q_norm is not None:
        q, k = rmsnorm_torch(q, q_norm, eps), rmsnorm_torch(k, k_norm, eps)
    freqs = positions[:, None, None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    at = table.long().gather(1, (slot // block)[:, None])[:, 0] * block + slot % block
    k_cache[at], v_cache[at] = k, v
    return q.contiguous()


def silu_mul_torch(gate, up):
    return torch.nn.functional.silu(gate) * up


# ---------------------------------------------------------------------------------------------- the kernels

if triton is not None:

    @triton.jit
    def _rmsnorm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, rout_ptr, sx, sr, so, sro, C, eps,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        m = c < C
        dt = out_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * sx + c, mask=m, other=0.0).to(tl.float32)
        if HAS_RES:  # the sum rounded to the model's dtype is the new residual, and what is normalised
            s = (x + tl.load(r_ptr + row * sr + c, mask=m, other=0.0).to(tl.float32)).to(dt)
            tl.store(rout_ptr + row * sro + c, s, mask=m)
            x = s.to(tl.float32)
        y = x * tl.rsqrt(tl.sum(x * x, axis=0) / C + eps)
        w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * so + c, (w * y.to(dt).to(tl.float32)).to(dt), mask=m)

    @triton.jit
    def _rotate(x1, x2, c, s, dt):
        """x cos + rotate_half(x) sin on a head's halves, each product rounded as the model's tensors round it."""
        o1 = ((x1 * c).to(dt).to(tl.float32) - (x2 * s).to(dt).to(tl.float32)).to(dt)
        o2 = ((x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)).to(dt)
        return o1, o2

    @triton.jit
    def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, sq, sk, sv, pos_ptr, slot_ptr, t_ptr, st, freq_ptr, qw_ptr, kw_ptr,
                           qo_ptr, kc_ptr, vc_ptr, skc_s, skc_h, svc_s, svc_h, eps,
                           H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                           QK_NORM: tl.constexpr, BLOCK: tl.constexpr):
        # program (row, h): h < H a query head, H <= h < H + KV a key head, then a value head (a copy)
        row = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        i = tl.arange(0, HALF)
        m = i < D // 2
        dt = qo_ptr.dtype.element_ty
        slot = tl.load(slot_ptr + row)  # the row's logical slot, then its pool slot through the block table
        slot = tl.load(t_ptr + row * st + slot // BLOCK).to(tl.int64) * BLOCK + slot % BLOCK
        if h >= H + KV:
            j = h - H - KV
            src = v_ptr + row * sv + j * D
            dst = vc_ptr + slot * svc_s + j * svc_h
            tl.store(dst + i, tl.load(src + i, mask=m), mask=m)
            tl.store(dst + D // 2 + i, tl.load(src + D // 2 + i, mask=m), mask=m)
        else:
            if h < H:
                src = q_ptr + row * sq + h * D
                w_ptr = qw_ptr
            else:
                src = k_ptr + row * sk + (h - H) * D
                w_ptr = kw_ptr
            x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + D // 2 + i, mask=m, other=0.0).to(tl.float32)
            if QK_NORM:  # Qwen3: RMSNorm over the head, float32, cast before the weight
                r = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / D + eps)
                w1 = tl.load(w_ptr + i, mask=m, other=0.0).to(tl.float32)
                w2 = tl.load(w_ptr + D // 2 + i, mask=m, other=0.0).to(tl.float32)
                x1 = (w1 * (x1 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
                x2 = (w2 * (x2 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
            f = tl.load(pos_ptr + row).to(tl.float32) * tl.load(freq_ptr + i, mask=m, other=0.0)
            o1, o2 = _rotate(x1, x2, tl.cos(f).to(dt).to(tl.float32), tl.sin(f).to(dt).to(tl.float32), dt)
            if h < H:
                dst = qo_ptr + (row * H + h) * D
            else:
                dst = kc_ptr + slot * skc_s + (h - H) * skc_h
            tl.store(dst + i, o1, mask=m)
            tl.store(dst + D // 2 + i, o2, mask=m)

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, sg, su, so, N, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = c < N
        dt = out_ptr.dtype.element_ty
        g = tl.load(g_ptr + row * sg + c, mask=m, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * su + c, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * so + c, ((g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * u).to(dt), mask=m)

    # ---- the training forward's rotary and the backward kernels

    @triton.jit
    def _rope_kernel(q_ptr, k_ptr, sq, sk, cos_ptr, sin_ptr, sc, qo_ptr, ko_ptr, sign, H: tl.constexpr,
                     KV: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr):
        # program (row, h): h < H a query head, else a key head. sign -1 is the backward: rotary is a rotation, its
        # transpose the rotation by -angle, with the products rounded where autograd's bf16 tensors round them
        row = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        i = tl.arange(0, HALF)
        m = i < D // 2
        dt = qo_ptr.dtype.element_ty
        if h < H:
            src = q_ptr + row * sq + h * D
            dst = qo_ptr + (row * H + h) * D
        else:
            src = k_ptr + row * sk + (h - H) * D
            dst = ko_ptr + (row * KV + h - H) * D
        x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + row * sc + i, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + row * sc + i, mask=m, other=0.0).to(tl.float32) * sign
        o1, o2 = _rotate(x1, x2, c, s, dt)
        tl.store(dst + i, o1, mask=m)
        tl.store(dst + D // 2 + i, o2, mask=m)

    @triton.jit
    def _rmsnorm_bwd_kernel(dy_ptr, x_ptr, w_ptr, dr_ptr, dx_ptr, dw_ptr, sdy, sx, sdr, sdx, R, C, eps,
                            HAS_DRES: tl.constexpr, DW: tl.constexpr, BLOCK: tl.constexpr):
        # rows pid, pid + P, ...: dx from the saved input (1/rms recomputed, not saved); the weight's gradient summed
        # over this program's rows in float32, one partial row per program (the op adds the P partials)
        pid = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        m = c < C
        dt = dx_ptr.dtype.element_ty
        w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        for row in range(pid, R, tl.num_programs(0)):
            x = tl.load(x_ptr + row * sx + c, mask=m, other=0.0).to(tl.float32)
            rs = tl.rsqrt(tl.sum(x * x, axis=0) / C + eps)
            xh = x * rs
            dy = tl.load(dy_ptr + row * sdy + c, mask=m, other=0.0).to(tl.float32)
            if DW:
                dw += dy * xh.to(dt).to(tl.float32)
            g = (dy * w).to(dt).to(tl.float32)  # d(normalised), rounded where the model's product rounds
            dx = rs * (g - xh * (tl.sum(g * xh, axis=0) / C))
            if HAS_DRES:  # add_rmsnorm: the residual's own gradient joins (x + r feeds both)
                dx = dx.to(dt).to(tl.float32) + tl.load(dr_ptr + row * sdr + c, mask=m, other=0.0).to(tl.float32)
            tl.store(dx_ptr + row * sdx + c, dx.to(dt), mask=m)
        if DW:
            tl.store(dw_ptr + pid * C + c, dw, mask=m)

    @triton.jit
    def _silu_mul_bwd_kernel(dh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, sdh, sg, su, N, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = c < N
        dt = dg_ptr.dtype.element_ty
        dh = tl.load(dh_ptr + row * sdh + c, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + row * sg + c, mask=m, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * su + c, mask=m, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        ds = (dh * u).to(dt).to(tl.float32)  # d silu(g), rounded as autograd's product is
        tl.store(du_ptr + row * N + c, (dh * (g * sig).to(dt).to(tl.float32)).to(dt), mask=m)
        tl.store(dg_ptr + row * N + c, (ds * sig * (1.0 + g * (1.0 - sig))).to(dt), mask=m)


def _run(name, kernel, grid, *args, num_warps=NUM_WARPS, **meta):
    try:
        kernel[grid](*args, num_warps=num_warps, **meta)
    except Exception as e:  # noqa: BLE001  (triton raises its own compilation, resource and driver errors)
        raise RuntimeError(f"Triton kernel {name} failed ({type(e).__name__}: {str(e).strip()[:300]}); "
                           f"ADAMAME_KERNELS=torch runs the layers in PyTorch instead") from e


def _check_rows(*ts):
    for t in ts:
        if t is not None and (t.dim() != 2 or t.stride(-1) != 1):
            raise ValueError(f"layer kernels take [rows, features] tensors with a unit last stride, got "
                             f"{tuple(t.shape)} strides {t.stride()}")


# ---------------------------------------------------------------------------------------------- the ops

@torch.library.custom_op("adamame::rmsnorm", mutates_args=())
def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [R, C] -> weight * normalise(x), [R, C] in x's dtype."""
    _check_rows(x)
    if not _kernel_runs(x):
        return rmsnorm_torch(x, weight, eps)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        _run("_rmsnorm_kernel", _rmsnorm_kernel, (x.shape[0],), x, x, weight, out, out, x.stride(0), 0,
             out.stride(0), 0, x.shape[1], eps, HAS_RES=False, BLOCK=_pow2(x.shape[1]),
             num_warps=_norm_warps(_pow2(x.shape[1])))
    return out


@rmsnorm.register_fake
def _(x, weight, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("adamame::add_rmsnorm", mutates_args=())
def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [R, C] -> (weight * normalise(x + residual), x + residual), both in x's dtype."""
    _check_rows(x, residual)
    if not _kernel_runs(x):
        return add_rmsnorm_torch(x, residual, weight, eps)
    out, s = torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        _run("_rmsnorm_kernel", _rmsnorm_kernel, (x.shape[0],), x, residual, weight, out, s, x.stride(0),
             residual.stride(0), out.stride(0), s.stride(0), x.shape[1], eps, HAS_RES=True, BLOCK=_pow2(x.shape[1]),
             num_warps=_norm_warps(_pow2(x.shape[1])))
    return out, s


@add_rmsnorm.register_fake
def _(x, residual, weight, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("adamame::rope_cache", mutates_args=("k_cache", "v_cache"))
def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
               table: torch.Tensor, inv_freq: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float, block: int) -> torch.Tensor:
    """Rotary (after Qwen3's per-head RMSNorm when q_norm / k_norm are given) on q [R, H * D] and k [R, KV * D] at
    `positions`, k and v written into the pools [P, KV, D] at row r's logical slot slot[r] through its block table
    (pool slot table[r, slot[r] // block] * block + slot[r] % block; positions, slot: [R] int64; table [R, W] int32,
    unit last stride; inv_freq [D / 2] float32). Returns q roped, [R, H, D] contiguous."""
    _check_rows(q, k, v)
    if table.dtype != torch.int32 or table.stride(-1) != 1:
        raise ValueError("rope_cache: the block table must be an int32 tensor with a unit last stride")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("rope_cache: the caches need a unit stride in their last dimension")
    if not _kernel_runs(q):
        return rope_cache_torch(q, k, v, positions, slot, table, inv_freq, k_cache, v_cache, q_norm, k_norm, eps,
                                block)
    R, (KV, D) = q.shape[0], k_cache.shape[1:]
    H = q.shape[1] // D
    out = torch.empty(R, H, D, dtype=q.dtype, device=q.device)
    if R:
        norm = q_norm is not None
        _run("_rope_cache_kernel", _rope_cache_kernel, (R, H + 2 * KV), q, k, v, q.stride(0), k.stride(0),
             v.stride(0), positions, slot, table, table.stride(0), inv_freq, q_norm if norm else inv_freq,
             k_norm if norm else inv_freq, out, k_cache, v_cache, k_cache.stride(0), k_cache.stride(1),
             v_cache.stride(0), v_cache.stride(1), eps, H=H, KV=KV, D=D, HALF=_pow2(D // 2), QK_NORM=norm,
             BLOCK=block, num_warps=ROPE_WARPS)
    return out


@rope_cache.register_fake
def _(q, k, v, positions, slot, table, inv_freq, k_cache, v_cache, q_norm, k_norm, eps, block):
    D = k_cache.shape[-1]
    return torch.empty(q.shape[0], q.shape[1] // D, D, dtype=q.dtype, device=q.device)


@torch.library.custom_op("adamame::silu_mul", mutates_args=())
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [R, N] -> silu(gate) * up, [R, N] in gate's dtype."""
    _check_rows(gate, up)
    if not _kernel_runs(gate):
        return silu_mul_torch(gate, up)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    R, N = gate.shape
    if R:
        _run("_silu_mul_kernel", _silu_mul_kernel, (R, -(-N // SILU_BLOCK)), gate, up, out, gate.stride(0),
             up.stride(0), out.stride(0), N, BLOCK=SILU_BLOCK)
    return out


@silu_mul.register_fake
def _(gate, up):
    return torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)


# ---------------------------------------------------------------------------------------------- training

# The training forward (adamame/model.py, on CUDA) runs rmsnorm, add_rmsnorm and silu_mul above and `rope` below, each
# with a backward kernel registered for autograd. What each saves for its backward: rmsnorm its input, add_rmsnorm the
# sum, silu_mul gate and up, rope nothing (the rotary tables are shared by the layers); 1/rms and silu(gate) are
# recomputed. PyTorch's ops save a float32 copy of each norm's input and silu(gate) besides gate and up.

BWD_PROGRAMS = 2048  # rmsnorm's backward: programs over the rows, each summing its rows' weight gradient


def rope_torch(q, k, cos, sin, sign=1.0):
    R, D = cos.shape
    c, s = cos[:, None], sin[:, None] * sign
    q, k = q.reshape(R, -1, D), k.reshape(R, -1, D)
    return (q * c + rotate_half(q) * s).contiguous(), (k * c + rotate_half(k) * s).contiguous()


def rmsnorm_backward_torch(dy, x, weight, dres, eps):
    xf = x.float()
    rs = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xh = xf * rs
    g = (dy * weight).float()
    dx = rs * (g - xh * (g * xh).mean(-1, keepdim=True))
    if dres is not None:
        dx = dx.to(x.dtype).float() + dres.float()
    return dx.to(x.dtype), (dy.float() * xh.to(x.dtype).float()).sum(0)


def silu_mul_backward_torch(dh, gate, up):
    g = gate.float()
    sig = torch.sigmoid(g)
    ds = (dh * up).float()
    return (ds * sig * (1 + g * (1 - sig))).to(gate.dtype), dh * torch.nn.functional.silu(gate)


@torch.library.custom_op("adamame::rope", mutates_args=())
def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         sign: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary on q [R, H * D] and k [R, KV * D] with the model's tables cos, sin [R, D] (in its dtype) -> (q, k) roped,
    [R, H, D] and [R, KV, D] contiguous. sign -1 rotates back: the backward."""
    _check_rows(q, k, cos, sin)
    if not _kernel_runs(q):
        return rope_torch(q, k, cos, sin, sign)
    R, D = cos.shape
    H, KV = q.shape[1] // D, k.shape[1] // D
    qo, ko = q.new_empty(R, H, D), k.new_empty(R, KV, D)
    if R:
        _run("_rope_kernel", _rope_kernel, (R, H + KV), q, k, q.stride(0), k.stride(0), cos, sin, cos.stride(0), qo,
             ko, sign, H=H, KV=KV, D=D, HALF=_pow2(D // 2), num_warps=ROPE_WARPS)
    return qo, ko


@rope.register_fake
def _(q, k, cos, sin, sign=1.0):
    D = cos.shape[1]
    return q.new_empty(q.shape[0], q.shape[1] // D, D), k.new_empty(k.shape[0], k.shape[1] // D, D)


@torch.library.custom_op("adamame::rmsnorm_backward", mutates_args=())
def rmsnorm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dres: torch.Tensor | None, eps: float,
                     need_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of out = weight * normalise(x) for d(out) dy [R, C] (+ dres, the residual's gradient, for
    add_rmsnorm's sum); dweight float32 [C], or empty when not needed."""
    _check_rows(dy, x, dres)
    if not _kernel_runs(x):
        dx, dw = rmsnorm_backward_torch(dy, x, weight, dres, eps)
        return dx, dw if need_dw else dw.new_empty(0)
    R, C = x.shape
    P = max(1, min(R, BWD_PROGRAMS))
    dx = torch.empty_like(x)
    part = torch.empty(P if need_dw else 0, C, dtype=torch.float32, device=x.device)
    if R:
        _run("_rmsnorm_bwd_kernel", _rmsnorm_bwd_kernel, (P,), dy, x, weight, dx if dres is None else dres, dx, part,
             dy.stride(0), x.stride(0), 0 if dres is None else dres.stride(0), dx.stride(0), R, C, eps,
             HAS_DRES=dres is not None, DW=need_dw, BLOCK=_pow2(C), num_warps=_norm_warps(_pow2(C), 16))
    return dx, (part.sum(0) if need_dw else part.new_empty(0))


@rmsnorm_backward.register_fake
def _(dy, x, weight, dres, eps, need_dw):
    return torch.empty_like(x), x.new_empty(x.shape[1] if need_dw else 0, dtype=torch.float32)


@torch.library.custom_op("adamame::silu_mul_backward", mutates_args=())
def silu_mul_backward(dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d gate, d up) of silu(gate) * up for its gradient dh [R, N]; silu recomputed from gate."""
    _check_rows(dh, gate, up)
    if not _kernel_runs(gate):
        return silu_mul_backward_torch(dh, gate, up)
    R, N = gate.shape
    dg, du = gate.new_empty(R, N), up.new_empty(R, N)
    if R:
        _run("_silu_mul_bwd_kernel", _silu_mul_bwd_kernel, (R, -(-N // SILU_BLOCK)), dh, gate, up, dg, du,
             dh.stride(0), gate.stride(0), up.stride(0), N, BLOCK=SILU_BLOCK)
    return dg, du


@silu_mul_backward.register_fake
def _(dh, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _rms_setup(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_bwd(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw = rmsnorm_backward(dy.contiguous(), x, weight, None, ctx.eps, ctx.needs_input_grad[1])
    return dx, (dw.to(weight.dtype) if ctx.needs_input_grad[1] else None), None


def _add_rms_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2])  # the sum (the new residual) and the weight
    ctx.eps = inputs[3]


def _add_rms_bwd(ctx, dout, ds):
    s, weight = ctx.saved_tensors
    ds = torch.zeros_like(s) if ds is None else ds.contiguous()
    dx, dw = rmsnorm_backward(dout.contiguous(), s, weight, ds, ctx.eps, ctx.needs_input_grad[2])
    return dx, dx, (dw.to(weight.dtype) if ctx.needs_input_grad[2] else None), None


def _silu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _silu_bwd(ctx, dh):
    return silu_mul_backward(dh.contiguous(), *ctx.saved_tensors)


def _rope_setup(ctx, inputs, output):
    q, k, cos, sin, sign = inputs
    ctx.save_for_backward(cos, sin)
    ctx.sign, ctx.widths = sign, (q.shape[1], k.shape[1])


def _rope_bwd(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    R = cos.shape[0]
    dq, dk = rope(dq.reshape(R, ctx.widths[0]).contiguous(), dk.reshape(R, ctx.widths[1]).contiguous(), cos, sin,
                  -ctx.sign)
    return dq.view(R, -1), dk.view(R, -1), None, None, None


rmsnorm.register_autograd(_rms_bwd, setup_context=_rms_setup)
add_rmsnorm.register_autograd(_add_rms_bwd, setup_context=_add_rms_setup)
silu_mul.register_autograd(_silu_bwd, setup_context=_silu_setup)
rope.register_autograd(_rope_bwd, setup_context=_rope_setup)
