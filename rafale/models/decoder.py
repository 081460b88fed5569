"""Decoder-only transformer: GPT-NeoX (Pythia) and Llama (SmolLM, TinyLlama, Llama 3.2, Qwen2.5) in one file.

Notable choices:
- Five switches separate the two families: `parallel_residual`, `rotary_pct`, `norm` (layernorm/rmsnorm),
  `mlp` (gelu/swiglu) and `bias`. Qwen2's bias on q/k/v only is `attn_qkv_bias`. A family that needs
  more switches than these gets its own file.
- One fused QKV projection (one matmul instead of three). Its output rows are [q heads | k heads | v heads],
  so grouped-query attention is a split; NeoX checkpoints interleave q/k/v per head and weights.py
  reorders them on load and export. Other modules keep transformers' names (input_layernorm, o_proj,
  gate_proj, ...) so the weight name maps stay short.
- Rotary embeddings in the "rotate half" layout, on the first `rotary_pct` of each head (Pythia: 25%).
  cos/sin are precomputed in fp32 for `max_seq_len` positions over the whole head (cos 1 and sin 0 past the
  rotary dims, so rope is 4 ops on every dim, with its backward written out) and kept as buffers outside
  the state dict;
  Llama 3.1/3.2 frequency scaling ("llama3" rope type) is supported through `rope_scaling`.
- Attention is F.scaled_dot_product_attention (through models/attention.py). Training (no cache, no
  padding) takes the `is_causal` fast path; a KV cache, a padding mask or packed rows' segment ids build
  one boolean mask per forward, shared by all layers. Grouped kv heads are repeated explicitly rather
  than through SDPA's enable_gqa, which is slow on CPU; when decoding one token, each group of query
  heads shares its kv head without any copy.
- The KV cache is preallocated, (B, n_kv_head, max_len, head_dim) per layer, and written in place at a
  position counter: no torch.cat, and the cache is never regrown or copied while decoding.
- `vocab_size` is the embedding size as stored in the checkpoint (Pythia's 50304 is already padded).

Mirrors transformers' models/gpt_neox/modeling_gpt_neox.py, models/llama/modeling_llama.py and
models/qwen2/modeling_qwen2.py; tests/models/test_weights.py checks the logits against them.

Shape legend: B batch, T new tokens, S key positions (cached + new), C n_embd, nh n_head,
nkv n_kv_head, hs head_dim, rd rotary dims.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rafale.models.attention import sdpa

LLAMA3_ROPE_KEYS = {"factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len"}


@dataclass
class DecoderConfig:
    name: str = "decoder"
    # sizes
    vocab_size: int = 50304
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: Optional[int] = None  # grouped-query attention; None means n_head (plain multi-head)
    intermediate_size: Optional[int] = None  # None means 4 * n_embd (gelu) or ~8/3 * n_embd (swiglu)
    max_seq_len: int = 2048
    # rotary position embedding
    rotary_pct: float = 1.0  # fraction of each head that is rotated
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # llama3 scaling: the keys of LLAMA3_ROPE_KEYS, or None
    # block layout: the switches between GPT-NeoX and Llama
    parallel_residual: bool = False  # x + attn(ln1(x)) + mlp(ln2(x)) instead of two sequential residuals
    norm: str = "rmsnorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"  # "gelu" | "swiglu"
    bias: bool = False  # biases on every linear layer except lm_head
    attn_qkv_bias: bool = False  # biases on q/k/v only (Qwen2)
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    # training
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        def fail(problem: str):
            raise ValueError(f"DecoderConfig {self.name!r}: {problem}")

        for key in ("vocab_size", "n_layer", "n_head", "n_embd", "max_seq_len"):
            if getattr(self, key) <= 0:
                fail(f"{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            fail(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            fail(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.norm not in ("layernorm", "rmsnorm"):
            fail(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu"):
            fail(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.intermediate_size is None:
            # SwiGLU has three matrices instead of two: 8/3 keeps the parameter count of a 4x GELU MLP.
            wide = 4 * self.n_embd if self.mlp == "gelu" else int(8 * self.n_embd / 3)
            self.intermediate_size = -(-wide // 64) * 64  # round up to a multiple of 64
        if not 0.0 < self.rotary_pct <= 1.0:
            fail(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.rope_dim == 0 or self.rope_dim % 2:
            fail(f"rotary dims int(head_dim * rotary_pct) = {self.rope_dim} must be even and positive")
        if self.rope_scaling is not None and set(self.rope_scaling) != LLAMA3_ROPE_KEYS:
            fail(f"rope_scaling needs exactly the keys {sorted(LLAMA3_ROPE_KEYS)}, got {sorted(self.rope_scaling)}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)


# ---- Helpers: norm, rotary embedding, attention mask -----------------------------------------------------

def make_norm(config: DecoderConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps)
    return nn.RMSNorm(config.n_embd, eps=config.norm_eps)


def rope_inv_freq(config: DecoderConfig) -> torch.Tensor:
    """Inverse frequencies (rd/2,) in fp32, computed exactly as transformers does."""
    rd = config.rope_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, rd, 2, dtype=torch.int64).float() / rd))
    if config.rope_scaling is None:
        return inv_freq
    # Llama 3.1/3.2: slow down the low frequencies (long wavelengths) by `factor`, keep the high ones,
    # and interpolate smoothly in between.
    s = config.rope_scaling
    old_len = s["original_max_seq_len"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / s["low_freq_factor"], inv_freq / s["factor"], inv_freq)
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    is_medium = (wavelen >= old_len / s["high_freq_factor"]) & (wavelen <= old_len / s["low_freq_factor"])
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(config: DecoderConfig, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos, sin (max_seq_len, hs), fp32, and the index perm (hs,) that swaps the halves of the rotary dims.

    "Rotate half" pairs dim i with i + rd/2 on the first rd dims: x_rot * cos + cat(-x2, x1) * sin. Here sin
    carries that minus sign and past rd cos is 1 and sin 0, so rope on a whole head is x * cos + x[..., perm]
    * sin: few ops, the same numbers (x * 1 + y * 0 is exactly x). apply_rope swaps with slices (a whole
    sequence); the one-token decoding step (models/decode.py) with one gather through perm.
    """
    inv_freq = rope_inv_freq(config).to(device)
    hs, rd = config.head_dim, config.rope_dim
    positions = torch.arange(config.max_seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)  # (max_seq_len, rd/2)
    cos = torch.ones(config.max_seq_len, hs, device=device)
    sin = torch.zeros(config.max_seq_len, hs, device=device)
    cos[:, :rd] = torch.cat((freqs, freqs), dim=-1).cos()
    sin[:, :rd] = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
    perm = torch.arange(hs, device=device)
    perm[:rd] = perm[:rd].roll(rd // 2)  # [rd/2, ..., rd-1, 0, ..., rd/2-1, rd, ..., hs-1]
    return cos, sin, perm


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """Rotate the first rd dims of every head of x (..., hs); the other hs - rd dims pass through.

    cos and sin come from rope_tables, half is rd // 2; cos and sin (..., hs) broadcast against x:
    (T, 1, hs) or (B, T, 1, hs) for x (B, T, heads, hs).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _Rope.apply(x, cos, sin, half)
    return x * cos + swap_halves(x, half) * sin


def swap_halves(x: torch.Tensor, half: int) -> torch.Tensor:
    """x[..., perm] of rope_tables: the two halves of the first rd = 2 * half dims swapped, as slices copied
    by one cat (2-3x faster than the gather for a whole sequence)."""
    return torch.cat((x[..., half : 2 * half], x[..., :half], x[..., 2 * half :]), dim=-1)


class _Rope(torch.autograd.Function):
    """apply_rope with its backward written out. Autograd's own would undo the swap's slices by copying
    each into a zeroed tensor; the swap is its own inverse, so the gradient is g * cos + swap(g * sin).
    Each term is cast to x's dtype before the sum, as autograd does."""

    @staticmethod
    def forward(ctx, x, cos, sin, half):
        ctx.save_for_backward(cos, sin)
        ctx.half, ctx.x_dtype = half, x.dtype
        return x * cos + swap_halves(x, half) * sin

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        dx = (g * cos).to(ctx.x_dtype) + swap_halves((g * sin).to(ctx.x_dtype), ctx.half)
        return dx, None, None, None


def attention_mask_for(
    T: int, start: int, padding_mask: Optional[torch.Tensor], segment_ids: Optional[torch.Tensor], device
) -> Optional[torch.Tensor]:
    """Boolean mask (True = attend) of T queries at positions start.. over S = start + T keys.

    Causal, without the padding keys of padding_mask (B, S), and, given segment_ids (B, T) of a whole
    row (start 0), without the keys of other segments; segment 0 is padding. None when none is needed:
    plain causal attention (start == 0, no padding; SDPA's is_causal does it faster) or one new token
    attending to every cached key.
    """
    S = start + T
    if padding_mask is None and segment_ids is None and (start == 0 or T == 1):
        return None
    q_pos = torch.arange(start, S, device=device).view(T, 1)
    k_pos = torch.arange(S, device=device).view(1, S)
    mask = k_pos <= q_pos  # (T, S)
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # (B, 1, T, T)
        padding_mask = segment_ids > 0
    if padding_mask is not None:
        keep = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        # A padding query still attends to itself: a row with nothing to attend to gives NaN in SDPA.
        mask = (mask & keep) | (k_pos == q_pos)  # (B, 1, T, S)
    return mask


# ---- KV cache --------------------------------------------------------------------------------------------

class KVCache:
    """Keys and values of every layer, preallocated for max_len positions and filled in place.

    `k[i]` and `v[i]` are layer i's buffers, (B, n_kv_head, max_len, head_dim); `pos` counts the
    positions already filled. Create one with `Decoder.make_kv_cache`; `Decoder.forward` writes the new
    tokens' keys and values at `pos`, attends to everything up to them, then advances `pos`.
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, device=None, dtype=None):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = [(self.k[i], self.v[i]) for i in range(n_layer)]  # per-layer views, made once
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nkv, T, hs) at pos; return views of all keys and values so far (B, nkv, S, hs)."""
        T, (k_all, v_all) = k.size(2), self.layers[layer]
        k_all.narrow(2, self.pos, T).copy_(k)  # narrow: one op per write, cheaper than slicing 3 dims
        v_all.narrow(2, self.pos, T).copy_(v)
        return k_all.narrow(2, 0, self.pos + T), v_all.narrow(2, 0, self.pos + T)


# ---- Attention -> MLP -> Block -> Decoder ----------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.dropout = config.dropout
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_dim, bias=config.bias or config.attn_qkv_bias)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, rope, mask, kv_cache: Optional[KVCache]):
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        # split, not slicing: its backward is one cat, where each slice's would zero a whole qkv-sized tensor
        qk, v = self.qkv(x).view(B, T, nh + 2 * nkv, hs).split((nh + nkv, nkv), dim=2)
        q, k = apply_rope(qk, *rope).split((nh, nkv), dim=2)  # q and k heads rotated together
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh or nkv, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs)
        dropout_p = self.dropout if self.training else 0.0
        if nkv != nh and T == 1:
            # Decoding one token with grouped kv heads: each group's queries take the place of query
            # positions, so the cached keys and values are used as they are, without a copy.
            q = q.view(B, nkv, nh // nkv, hs)  # (B, nkv, nh/nkv, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            return self.o_proj(y.reshape(B, 1, C))  # (B, 1, C)
        if nkv != nh:
            # SDPA's enable_gqa=True falls back to its slow math kernel on CPU (8x slower to train in
            # torch 2.7); copying each kv head for its query group keeps the fused kernel.
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
        is_causal = mask is None and T > 1
        y = sdpa(q, k, v, mask, is_causal, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    """GELU: down(gelu(up(x))) (GPT-NeoX). SwiGLU: down(silu(gate(x)) * up(x)) (Llama)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x):
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))  # exact (erf) GELU, as Pythia's "gelu"


class Block(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        self.parallel_residual = config.parallel_residual
        self.input_layernorm = make_norm(config)
        self.attn = Attention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, kv_cache):
        a = self.attn(self.input_layernorm(x), rope, mask, kv_cache)
        if self.training:  # eval skips the Dropout calls: each module call costs real time when decoding
            a = self.dropout(a)
        h = x if self.parallel_residual else x + a  # GPT-NeoX: both branches read the block's input
        m = self.mlp(self.post_attention_layernorm(h))
        if self.training:
            m = self.dropout(m)
        return x + a + m if self.parallel_residual else h + m


class Decoder(nn.Module):
    """Token embedding -> n_layer Blocks -> final norm -> lm_head (an nn.Linear, tied to wte if configured)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.register_buffer("rope_perm", torch.empty(0, dtype=torch.long), persistent=False)
        self.init_buffers()
        self.init_weights()  # built under models.meta.on_meta(), the random fills are skipped

    def init_buffers(self):
        """Set up what the state dict does not hold: the rope tables and the lm_head/wte tie.

        Called by __init__; call it again after `to_empty()`, which leaves buffers uninitialised and
        gives tied parameters separate storage.
        """
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if self.wte.weight.is_meta:  # a model about to be loaded: to_empty(), then this again, make them
            return
        self.rope_cos, self.rope_sin, self.rope_perm = rope_tables(self.config, device=self.wte.weight.device)

    @torch.no_grad()
    def init_weights(self):
        """All random initialisation, in one place (GPT-2 style).

        Embeddings and linear weights ~ N(0, init_std); the two projections that write into the
        residual stream (o_proj, down_proj) get init_std / sqrt(2 * n_layer), so the stream's variance
        does not grow with depth. Biases start at zero, norms at weight 1 (and bias 0).
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down_proj.weight, mean=0.0, std=residual_std)

    def make_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        """A KV cache for `batch_size` sequences of up to `max_len` positions (prompt + generated).

        device and dtype default to the model's parameters'. Under autocast pass the compute dtype
        (e.g. torch.bfloat16): the cached keys must match the queries' dtype.
        """
        if max_len > self.config.max_seq_len:
            raise ValueError(
                f"KV cache max_len {max_len} is larger than the model's max_seq_len {self.config.max_seq_len}"
            )
        c, weight = self.config, self.wte.weight
        return KVCache(
            c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim,
            device=device or weight.device, dtype=dtype or weight.dtype,
        )

    def hidden_states(self, input_ids, *, position_ids=None, attention_mask=None, segment_ids=None, kv_cache=None):
        """Final-normed hidden states (B, T, n_embd) of input_ids (B, T).

        Args:
            position_ids: (B, T) rope positions; default start, start+1, ... where start is 0 or the
                cache's position. Pass them for left-padded batches (count only real tokens).
            attention_mask: (B, S) 1 for real tokens, 0 for padding, over every key position so far
                (the cached ones and the T new ones).
            segment_ids: (B, T) packed rows, without attention_mask or kv_cache: tokens attend only
                inside their segment (1, 2, ...; 0 is padding). Positions still count across the row;
                rope depends only on the distance between tokens, so that equals restarting at 0.
            kv_cache: a KVCache from make_kv_cache; the new keys/values are written at its position,
                which then advances by T.
        """
        B, T = input_ids.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if kv_cache is not None and (start + T > kv_cache.max_len or B != kv_cache.batch_size):
            raise ValueError(
                f"KV cache holds {kv_cache.batch_size} x {kv_cache.max_len} positions, {start} filled; "
                f"cannot add {B} x {T}"
            )
        if start + T > self.config.max_seq_len:
            raise ValueError(f"cannot attend to {start + T} positions, max_seq_len is only {self.config.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, start + T):
            raise ValueError(f"attention_mask must be (B, S) = {(B, start + T)}, got {tuple(attention_mask.shape)}")
        if segment_ids is not None and (segment_ids.shape != (B, T) or attention_mask is not None
                                        or kv_cache is not None):
            raise ValueError(f"segment_ids must be (B, T) = {(B, T)}, without attention_mask or kv_cache")

        x = self.wte(input_ids)
        if position_ids is None:
            cos, sin = self.rope_cos[start : start + T, None], self.rope_sin[start : start + T, None]  # (T, 1, hs)
        else:
            cos, sin = self.rope_cos[position_ids].unsqueeze(2), self.rope_sin[position_ids].unsqueeze(2)  # (B, T, 1, hs)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = attention_mask_for(T, start, attention_mask, segment_ids, input_ids.device)
        for block in self.blocks:
            x = block(x, (cos, sin, self.config.rope_dim // 2), mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.norm(x)

    def forward(self, input_ids, *, position_ids=None, attention_mask=None, segment_ids=None, kv_cache=None):
        """Logits (B, T, vocab_size); the arguments are those of hidden_states."""
        h = self.hidden_states(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               segment_ids=segment_ids, kv_cache=kv_cache)
        return self.lm_head(h)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count; a tied matrix counts once.

        exclude_embedding drops the token embedding and the output head, as the Pythia and scaling-law
        papers' "non-embedding" counts do.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.wte.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n
