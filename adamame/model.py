"""A from-scratch decoder-only transformer with Hugging Face parameter names (its files: adamame/hf.py).

Why from scratch: every other piece of the recipe (the KV-cache generator, the fused log-prob kernel, FSDP2
training) needs a model whose forward it controls: explicit positions so left-padded batches work, a KV
cache the generator owns, and the option to stop before the lm_head so a [tokens x vocab] tensor is never
made unless asked for. One file covers the three architectures the recipe uses, as their `config.json`
files describe them:

    qwen2  (DeepSeek-R1-Distill-Qwen-1.5B): q/k/v projections carry a bias
    qwen3  (Qwen3-4B):                      per-head RMSNorm on q and k before the rotary embedding
    llama:                                  optional bias on all projections, llama3 rope scaling

Parameter names equal the Hugging Face ones (`model.layers.3.self_attn.q_proj.weight` ...), so loading
and saving are a name-for-name copy, and each decoder layer is its own module so FSDP2 can shard it.

Attention for one layer, with h the input and (cos, sin) the rotary tables at each token's position:

    q, k, v = W_q h, W_k h, W_v h      (grouped-query: n_kv_heads <= n_heads)
    q, k    = rope(q), rope(k)          rope(x) = x * cos + rotate_half(x) * sin
    out     = W_o softmax(q k^T / sqrt(d) + mask) v

On CUDA every attention call runs with its SDPA backends pinned (`sdpa_backends`): the training forward's plain
causal call to the fused kernels (flash, cuDNN, memory-efficient; never the math backend, whose [B, H, T, T] scores
would not fit), the masked prefill and the decode step to the memory-efficient kernel, the one that takes an
arbitrary mask. An input a fused kernel cannot take then fails loudly instead of silently running the math backend.
ADAMAME_SDPA=any lets torch choose (the math backend included); ADAMAME_SDPA=math runs only the math backend.
The attention output is never `.view`ed: CUDA backends return it in layouts the CPU never produces.

The rollout copy holds q/k/v as one weight and gate/up as one (`merge_projections`): a decode layer then runs 4 GEMMs
instead of 7. Training, LoRA and the checkpoints keep Hugging Face's layout. Where the decode step runs its kernels
(CUDA; `fused_layers`), the forward runs the layer kernels too (RMSNorm with the residual add, rotary, SiLU * up,
each with its backward: adamame/layer_kernels.py): the same roundings, fewer passes and fewer saved activations.

Imports: torch; adamame: decode_attention (optional), layer_kernels (optional: without them both the decode step and
the training forward run the layers in PyTorch, and decode attends with SDPA).
"""

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # the optional siblings: the decode step's Triton kernels (each with a PyTorch fallback)
    from .decode_attention import decode_attention
    from .decode_attention import use_kernel as use_decode_kernel
    from .layer_kernels import add_rmsnorm, rmsnorm, rope, rope_cache, silu_mul
except ImportError:
    decode_attention = None

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")


def fused_layers(x: torch.Tensor) -> bool:
    """Whether the forward (training, prefill) runs the layer kernels with their backward (RMSNorm, the residual add,
    rotary, SiLU * up: adamame/layer_kernels.py): where the decode step runs its kernels (on CUDA; ADAMAME_KERNELS)."""
    return decode_attention is not None and use_decode_kernel(x)
SDPA_MODES = ("pinned", "any", "math")


def sdpa_backends(masked: bool) -> list | None:
    """The SDPA backends a CUDA attention call may use (None: torch's own choice), from ADAMAME_SDPA."""
    mode = os.environ.get("ADAMAME_SDPA", "pinned")
    if mode not in SDPA_MODES:
        raise ValueError(f"ADAMAME_SDPA={mode!r}: use one of {', '.join(SDPA_MODES)}")
    if mode == "any":
        return None
    if mode == "math":
        return [SDPBackend.MATH]
    if masked:
        return [SDPBackend.EFFICIENT_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def attention(q, k, v, mask=None, enable_gqa=False):
    """scaled_dot_product_attention, plain causal when mask is None; on CUDA with the backends of sdpa_backends."""
    kw = dict(is_causal=True, enable_gqa=enable_gqa) if mask is None else dict(attn_mask=mask)
    backends = sdpa_backends(mask is not None) if q.is_cuda else None
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, **kw)
    try:
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    except RuntimeError as e:
        if "No available kernel" not in str(e):
            raise
        m = None if mask is None else (tuple(mask.shape), mask.dtype)
        raise RuntimeError(f"attention: no SDPA backend among {[b.name for b in backends]} takes q {tuple(q.shape)} "
                           f"{q.dtype}, k {tuple(k.shape)}, mask {m} (torch's warnings above say why); "
                           f"ADAMAME_SDPA=any lets torch fall back to the math backend") from e


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # None (default rope) or the llama3 parameters
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    raw: dict = field(default_factory=dict, repr=False)  # the config.json dict, written back by hf.save_model

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        def need(key):
            if key not in d:
                raise ValueError(f"{source}: missing field '{key}'")
            return d[key]

        model_type = need("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{source}: unsupported model_type '{model_type}' "
                             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        if d.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        n_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        # transformers >= 5 writes rope settings under `rope_parameters`; released checkpoints use the older
        # top-level `rope_theta` and `rope_scaling`. Accept both.
        rope = dict(d.get("rope_parameters") or {})
        rope_scaling = d.get("rope_scaling") or None
        if rope_scaling:
            rope = {**rope, **rope_scaling}
        rope_theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"{source}: unsupported rope type '{rope_type}' (supported: default, llama3)")
        if rope_type == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            missing = [k for k in keys if k not in rope]
            if missing:
                raise ValueError(f"{source}: llama3 rope scaling misses {', '.join(missing)}")
            rope_scaling = {k: rope[k] for k in keys}
        else:
            rope_scaling = None
        bias = bool(d.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=n_heads,
            num_key_value_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or hidden // n_heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else bias,  # qwen2 always has q/k/v bias, never o bias
            o_bias=False if model_type == "qwen2" else bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            raw=dict(d),
        )


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), [head_dim/2] float32, with llama3 long-context scaling if configured."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    if cfg.rope_scaling is not None:  # llama3: divide low frequencies by `factor`, interpolate the middle band
        s = cfg.rope_scaling
        old_len = s["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / s["low_freq_factor"], old_len / s["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
        smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_layers(x):  # one kernel, the same roundings; its backward recomputes 1/rms from x
            return rmsnorm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
        # normalise in float32, cast back before the weight (as the reference implementations do)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys and values for every layer, filled slot by slot.

    k[i], v[i]: [B, n_kv_heads, S, head_dim]; valid: [B, S] bool, True where a slot holds a real token
    (left padding and not-yet-written slots are False). A forward with `cache` writes its T tokens into slots
    [start, start + T) and attends to slots [0, start + T).
    """

    k: list
    v: list
    valid: torch.Tensor

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int, max_len: int, dtype, device) -> "KVCache":
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        return cls(k, v, torch.zeros(batch, max_len, dtype=torch.bool, device=device))

    @staticmethod
    def nbytes(cfg: ModelConfig, batch: int, max_len: int, dtype) -> int:
        return (2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * max_len * cfg.head_dim * dtype.itemsize
                + batch * max_len)

    def store(self, layer: int, start: int):
        """Attention's cache hook for a forward at slots [start, start + T): writes them, returns [0, start + T)."""
        def store(k, v):
            T = k.shape[2]
            self.k[layer][:, :, start:start + T], self.v[layer][:, :, start:start + T] = k, v
            return self.k[layer][:, :, :start + T], self.v[layer][:, :, :start + T]
        return store


@dataclass
class PagedKVCache:
    """The decode step's cache: keys and values in a pool of blocks, and a block table per row.

    k[i], v[i]: [blocks * block, n_kv_heads, head_dim] (a block's slots are consecutive, vLLM's layout); table: [rows,
    width] int32. Row r's logical slot s lives at pool slot table[r, s // block] * block + s % block, so rows hold only
    the blocks they use and may share some (a prompt's). What each row holds is the caller's (adamame/paging.py)."""

    k: list
    v: list
    table: torch.Tensor
    block: int = 32

    @classmethod
    def allocate(cls, cfg: ModelConfig, blocks: int, rows: int, width: int, dtype, device, *,
                 block: int = 32) -> "PagedKVCache":
        shape = (blocks * block, cfg.num_key_value_heads, cfg.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        return cls(k, v, torch.zeros(rows, width, dtype=torch.int32, device=device), block)

    @classmethod
    def static(cls, cfg: ModelConfig, rows: int, slots: int, dtype, device, block: int = 32) -> "PagedKVCache":
        """A cache whose rows each hold their own blocks for `slots` slots (a static cache's layout; block 0 is the
        scratch): for callers that run the decode step directly."""
        width = -(-slots // block)
        cache = cls.allocate(cfg, rows * width + 1, rows, width, dtype, device, block=block)
        cache.table.copy_(torch.arange(1, rows * width + 1, dtype=torch.int32, device=device).view(rows, width))
        return cache

    @staticmethod
    def nbytes(cfg: ModelConfig, blocks: int, dtype, block: int = 32) -> int:
        return 2 * cfg.num_hidden_layers * blocks * block * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize

    def where(self, rows: int, slots: torch.Tensor) -> torch.Tensor:
        """Pool slots (int64) of logical slots `slots` ([rows] or [rows, k]) of rows [0, rows)."""
        s = slots if slots.dim() == 2 else slots[:, None]
        at = self.table[:rows].gather(1, s // self.block).long() * self.block + s % self.block
        return at if slots.dim() == 2 else at[:, 0]



class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def qkv(self, x) -> tuple:
        """(q, k, v) [..., heads * head_dim]: three GEMMs, or one and its column blocks after merge_projections."""
        if hasattr(self, "qkv_proj"):
            return self.qkv_proj(x).split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], -1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, cos, sin, mask, cache_kv=None):
        # x: [B, T, C]; cos, sin: [B, 1, T, hd]; mask: None (plain causal) or an additive bias over the folded query
        # heads (attention_bias): [B, 1, rep * T, S], or [B, 1, 1, S] for a decode step (T = 1; it broadcasts).
        # cache_kv: a function that stores the new keys and values [B, n_kv, T, hd] and returns the ones to attend to
        # (KVCache.store, or the decode step's paged one).
        B, T, _ = x.shape
        q, k, v = self.qkv(x)  # a Linear's output is contiguous on every device, a merged one's parts row-strided
        q = q.view(B, T, self.n_heads, self.hd)
        k, v = k.view(B, T, self.n_kv, self.hd), v.view(B, T, self.n_kv, self.hd)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if fused_layers(x):  # both rotations in one kernel (its backward: the rotation back), nothing saved
            q, k = rope(q.reshape(B * T, -1), k.reshape(B * T, -1), cos.reshape(B * T, -1), sin.reshape(B * T, -1))
            q, k = q.view(B, T, self.n_heads, self.hd), k.view(B, T, self.n_kv, self.hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if not fused_layers(x):
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache_kv is not None:
            k, v = cache_kv(k, v)
        if mask is None:
            y = attention(q, k, v, enable_gqa=self.n_kv != self.n_heads)
        else:
            # Grouped-query attention without copying k/v: the rep = n_heads / n_kv query heads that share a kv head
            # are folded into the query-length axis, so the kernel that takes a mask runs it as plain attention.
            qg = q.reshape(B, self.n_kv, self.n_heads // self.n_kv * T, self.hd)
            y = attention(qg, k, v, mask).reshape(B, self.n_heads, T, self.hd)  # a copy when the layout needs one
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


def attention_bias(allowed: torch.Tensor, rep: int, dtype) -> torch.Tensor:
    """The additive attention bias for `allowed` [B, T, S] (True: the query may see the key): [B, 1, rep * T, S], 0 or
    -inf, one row per folded query head (Attention folds the rep query heads of a kv head into the query axis).

    Built once per forward in the compute dtype, its rows 16-element aligned: the memory-efficient kernel takes exactly
    this, where a bool mask is converted and an unaligned bias padded by a copy inside every layer's call."""
    B, T, S = allowed.shape
    padded = -(-S // 16) * 16
    bias = torch.full((B, 1, rep, T, padded), float("-inf"), dtype=dtype, device=allowed.device)[..., :S]
    bias.masked_fill_(allowed[:, None, None], 0.0)
    return bias.view(B, 1, rep * T, S)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def gate_up(self, x) -> tuple:
        """(gate, up) [..., intermediate]: two GEMMs, or one and its halves after merge_projections."""
        if hasattr(self, "gate_up_proj"):
            return self.gate_up_proj(x).chunk(2, -1)
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x):
        if fused_layers(x):
            g, u = self.gate_up(x)
            return self.down_proj(silu_mul(g.reshape(-1, g.shape[-1]), u.reshape(-1, u.shape[-1])).view(g.shape))
        if hasattr(self, "gate_up_proj"):  # silu in place (on a slice: chunk's views refuse it under autograd), so
            gu = self.gate_up_proj(x)       # one [.., 2I] buffer and the product: the plan's 3 x intermediate
            n = gu.shape[-1] // 2
            return self.down_proj(F.silu(gu[..., :n], inplace=True) * gu[..., n:])
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache_kv=None):
        if fused_layers(x):  # the residual add inside the second norm's kernel, which returns the sum too
            a = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv)
            norm = self.post_attention_layernorm
            n, s = add_rmsnorm(a.reshape(-1, a.shape[-1]), x.reshape(-1, x.shape[-1]), norm.weight, norm.eps)
            return s.view(x.shape) + self.mlp(n.view(x.shape))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def _apply(self, fn, recurse=True):
        # Every .to() / .cuda() / to_empty() passes here. Recompute the rotary table afterwards so it stays
        # float32 (a .to(bfloat16) would round it) and real (to_empty from the meta device leaves it garbage),
        # and re-tie lm_head to the embedding (moving off the meta device makes two separate tensors).
        super()._apply(fn, recurse)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.inv_freq = rope_inv_freq(self.config, self.inv_freq.device)
        return self

    def rope(self, positions: torch.Tensor, dtype) -> tuple:
        """(cos, sin) [B, 1, T, head_dim] for integer positions [B, T], computed in float32."""
        freqs = positions[:, None, :, None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, positions=None, mask=None, cache: KVCache | None = None, start=0, *,
                logits_at=slice(None), head=None):
        """input_ids, positions, mask: [B, T] (mask: bool, True = real token; left padding = False).

        positions default to 0..T-1 (or start..start+T-1 with a cache). With `cache`, the T tokens are written
        to cache slots [start, start + T) and attend to every valid slot before them. Returns logits in the
        parameters' dtype. `logits_at` picks the positions that get logits: a slice of the T axis ([B, T', V], e.g.
        slice(-1, None) for a prefill) or a bool mask [B, T] (the trainer's response positions: [N, V] for its N True
        entries), so no logits are made for positions nobody reads. `head(hidden, weight)` replaces the lm_head: it
        gets the final normalised hidden states at those positions and the lm_head weight [V, C] and its result is
        returned (the chunked log-prob path). It runs inside this forward on purpose: under FSDP the root's
        parameters, lm_head included, are gathered only while the root's forward runs.
        """
        B, T = input_ids.shape
        dev = input_ids.device
        if positions is None:
            positions = torch.arange(start, start + T, device=dev).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(positions, x.dtype)

        allowed = None  # [B, T, S]: which keys each query sees; a query always sees itself, so padded rows stay finite
        if cache is not None:
            new_valid = torch.ones(B, T, dtype=torch.bool, device=dev) if mask is None else mask
            cache.valid[:, start:start + T] = new_valid
            valid = cache.valid[:, :start + T]
            q_slot = (start + torch.arange(T, device=dev))[:, None]
            k_slot = torch.arange(valid.shape[1], device=dev)[None, :]
            allowed = (valid[:, None, :] & (k_slot <= q_slot)) | (k_slot == q_slot)
        elif mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            allowed = (mask[:, None, :] & causal) | torch.eye(T, dtype=torch.bool, device=dev)
        cfg = self.config
        attn_mask = None if allowed is None else \
            attention_bias(allowed, cfg.num_attention_heads // cfg.num_key_value_heads, x.dtype)

        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, attn_mask, None if cache is None else cache.store(i, start))
        x = self.model.norm(x)
        x = x[logits_at] if isinstance(logits_at, torch.Tensor) else x[:, logits_at]
        return self.lm_head(x) if head is None else head(x, self.lm_head.weight)

    def decode_step(self, tokens, positions, cache: PagedKVCache, slot: torch.Tensor, rows: int, slots: int, *,
                    active=None, groups=None):
        """One generated token for each of the first `rows` cache rows, attending to logical cache slots [0, slots).

        tokens, positions, slot: [>= rows] int64; row r's new token goes to its logical slot slot[r] (< slots) and it
        attends to its slots [slot[r] - positions[r], slot[r]] (its prompt's first token to the new one), so rows can
        hold sequences of different ages; active: [>= rows] bool or None (all), False for rows whose output is not
        needed (finished, or padding); groups: None, or (members, pend) [>= rows] of rows that share a prompt's blocks
        (decode_attention's cascade: the kernel reads each shared prompt once for its rows). Returns logits [rows, V].
        Every shape depends only on (rows, slots) and the slots, the block table and the groups live on the device,
        so the generator can capture this call as one CUDA graph per (rows, slots) bucket and replay it step after
        step.
        With the Triton kernels (on CUDA; decode_attention.use_kernel decides) the step is `fused_decode_step`; in
        PyTorch (the CPU) it runs the layers' forward and attends with SDPA to every slot of the bucket, gathered
        through the block table, under an additive bias (0 in the row's range, -inf elsewhere).
        """
        if decode_attention is not None and use_decode_kernel(tokens):
            return self.fused_decode_step(tokens[:rows], positions[:rows], cache, slot[:rows], slots, active=active,
                                          groups=None if groups is None else (groups[0][:rows], groups[1][:rows]))
        x = self.model.embed_tokens(tokens[:rows, None])  # [R, 1, C]
        cos, sin = self.rope(positions[:rows, None], x.dtype)
        slot = slot[:rows]
        s = torch.arange(slots, device=x.device)
        at, new = cache.where(rows, s.expand(rows, slots)), cache.where(rows, slot)  # pool slots [R, slots], [R]
        seen = (s >= (slot - positions[:rows])[:, None]) & (s <= slot[:, None])
        bias = torch.zeros(seen.shape, dtype=x.dtype, device=x.device).masked_fill_(~seen, float("-inf"))

        def paged(k_pool, v_pool):  # Attention's cache hook: the new key and value in, the row's slots out
            def store(k, v):
                k_pool[new], v_pool[new] = k[:, :, 0], v[:, :, 0]
                return k_pool[at].transpose(1, 2), v_pool[at].transpose(1, 2)  # [R, n_kv, slots, hd]
            return store

        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, bias[:, None, None, :], paged(cache.k[i], cache.v[i]))
        return self.lm_head(self.model.norm(x))[:, 0]

    def fused_decode_step(self, tokens, positions, cache: PagedKVCache, slot, slots: int, *, active=None, groups=None):
        """decode_step on the Triton kernels, one token per row as [R, features] (R = len(tokens)): per layer 4 GEMMs
        after merge_projections (7 before) and 5 kernels (adamame/layer_kernels.py, adamame/decode_attention.py):

            h, res = x + res, rmsnorm(x + res)     (the first layer: res = x, the embedding)
            q, k, v = W_qkv h                      rope_cache: rotary at each row's position, k and v into the pool
            x = W_o attention(q, cache)            row r reads its slots [slot_r - position_r, slot_r] through its
            h, res = rmsnorm(x + res), x + res     block table, none if inactive
            x = W_down (silu(W_gate h) * W_up h)
        """
        cfg, R = self.config, tokens.shape[0]
        eps = cfg.rms_norm_eps
        end = (slot + 1).to(torch.int32)
        start = (slot - positions).to(torch.int32)  # the prompt's first token
        if active is not None:
            end = end * active[:R]  # an inactive row reads nothing
        table = cache.table[:R, :-(-slots // cache.block)]  # the bucket's blocks
        x, res = self.model.embed_tokens(tokens), None
        for i, layer in enumerate(self.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            w = layer.input_layernorm.weight
            h, res = (rmsnorm(x, w, eps), x) if res is None else add_rmsnorm(x, res, w, eps)
            norms = (attn.q_norm.weight, attn.k_norm.weight) if cfg.qk_norm else (None, None)
            q = rope_cache(*attn.qkv(h), positions, slot, table, self.inv_freq, cache.k[i], cache.v[i], *norms, eps,
                           cache.block)
            y = decode_attention(q, cache.k[i], cache.v[i], table, start, end, attn.hd ** -0.5, *(groups or ()))
            x = attn.o_proj(y.view(R, -1))
            h, res = add_rmsnorm(x, res, layer.post_attention_layernorm.weight, eps)
            x = mlp.down_proj(silu_mul(*mlp.gate_up(h)))
        return self.lm_head(add_rmsnorm(x, res, self.model.norm.weight, eps)[0])

    @torch.no_grad()
    def merge_projections(self) -> "Transformer":
        """Hold each layer's q/k/v projections as one `qkv_proj` and gate/up as one `gate_up_proj` (their weights and
        biases stacked along the output rows, in that order), in place; the same function, 4 GEMMs a decode layer
        instead of 7. For generation only: the names are no longer Hugging Face's (merged_param maps them)."""
        for layer in self.model.layers:
            a, m = layer.self_attn, layer.mlp
            if hasattr(a.q_proj, "lora_A"):
                raise ValueError("merge_projections: merge the LoRA adapters first (adamame.dist.rollout_copy does)")
            a.qkv_proj = _stack_linear(a.q_proj, a.k_proj, a.v_proj)
            m.gate_up_proj = _stack_linear(m.gate_proj, m.up_proj)
            del a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj
        return self


QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
MERGED = {**{p: ("qkv_proj", QKV) for p in QKV}, **{p: ("gate_up_proj", GATE_UP) for p in GATE_UP}}


def _stack_linear(*parts: nn.Linear) -> nn.Linear:
    w = parts[0].weight
    out = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=parts[0].bias is not None, device=w.device,
                    dtype=w.dtype)
    out.weight.copy_(torch.cat([p.weight for p in parts]))
    if out.bias is not None:
        out.bias.copy_(torch.cat([p.bias for p in parts]))
    return out


def merged_param(model: Transformer, name: str) -> torch.Tensor:
    """The tensor that holds Hugging Face parameter `name` in a model after merge_projections: a row block of a
    qkv_proj or gate_up_proj weight (or bias), or the parameter itself."""
    *path, proj, kind = name.split(".")
    if proj not in MERGED:
        return model.get_parameter(name)
    merged, order = MERGED[proj]
    cfg = model.config
    sizes = {"q_proj": cfg.num_attention_heads * cfg.head_dim, "k_proj": cfg.num_key_value_heads * cfg.head_dim,
             "v_proj": cfg.num_key_value_heads * cfg.head_dim, "gate_proj": cfg.intermediate_size,
             "up_proj": cfg.intermediate_size}
    at = sum(sizes[p] for p in order[:order.index(proj)])
    return model.get_parameter(".".join(path + [merged, kind]))[at:at + sizes[proj]]


def stored_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype the checkpoint's weights are stored in (config.json's torch_dtype or dtype; float32 when absent)."""
    name = cfg.raw.get("torch_dtype") or cfg.raw.get("dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)
