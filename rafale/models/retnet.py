"""RetNet: a decoder whose attention is replaced by multi-scale retention (Sun et al., 2023, arXiv 2307.08621).

Retention is attention without the softmax, with a fixed exponential decay instead: head h weighs the token
n - m positions back by gamma_h ** (n - m), gamma_h = 1 - 2 ** (-5 - h). Without the softmax the same outputs
come from three computations, all here and held equal by tests/models/test_retnet.py (float64, 1e-10):

- parallel    O = (Q K^T * D) V over the whole sequence, D[n, m] = gamma ** (n - m) for m <= n: one set of
              matmuls, like attention. Training, for sequences of up to `chunk_size` tokens.
- recurrent   S_n = gamma S_{n-1} + K_n^T V_n, o_n = Q_n S_n: a (d_k, d_v) state per head, constant time
              and memory per token however long the text. Generation, one token at a time.
- chunkwise   the parallel form inside chunks of `chunk_size` tokens, the recurrent one across them.
              Training on longer sequences (memory grows with chunk_size, not with T^2), and the prompt
              in generation (it also gives the state the recurrent form continues from).

Notable choices:
- The normalisations of the paper's section 3.2, exactly, in all three forms: q scaled by d_k ** -0.5;
  row n of D divided by sqrt(c_n), c_n = sum_m D[n, m]; each row of Q K^T * D divided by
  max(|its sum|, 1). The recurrent form carries c_n and z_n = gamma z_{n-1} + K_n beside S_n for them.
  The group norm that follows undoes any per-head, per-token scale, so they matter only for its eps
  and for the numerical range.
- Queries and keys rotate by position (rotary, "rotate half", over the whole head). The paper writes the
  position term as xPos, a rotation e^(i n theta) times gamma^n: the rotation is this one, gamma^n is in D.
- Values and the swish gate are `value_factor` (the paper: 2) times n_embd wide; q, k, v and the gate
  come from one fused projection. With value_factor 2 retention has 8 n_embd^2 weights against
  attention's 4, so the FFN is 2 n_embd wide by default (the paper's choice): per layer, as many
  parameters as a transformer block with a 4 n_embd FFN.
- Pre-norm blocks (LayerNorm), a GELU or SwiGLU FFN, no biases; a group norm over heads (one group per
  head) on retention's output.
- Padding: a left-padded row's padding keys are left out of D, of c and of the state, so the row gives
  the same numbers as alone. Packed rows (segment_ids) take the parallel form with D cut between segments.
- Generation reuses rafale.models.generate: `make_kv_cache` gives a RetentionState instead of a cache (the
  decoder's name, so one loop drives both), and `hidden_states(..., kv_cache=state)` continues it.

Shape legend: B batch, T tokens, C n_embd, Cv value width (value_factor * C), nh n_head, dk key head dim
(C / nh), dv value head dim (Cv / nh), L chunk length.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RetNetConfig:
    name: str = "retnet"
    # sizes
    vocab_size: int = 50304
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    value_factor: int = 2  # values and the gate are value_factor * n_embd wide
    intermediate_size: Optional[int] = None  # FFN width; None means 2 * n_embd (gelu) or ~4/3 * n_embd (swiglu)
    max_seq_len: int = 2048  # positions the rotary tables cover
    rope_theta: float = 10000.0
    # retention
    chunk_size: int = 512  # longer sequences (without a state) take the chunkwise form, in chunks of this size
    # block
    mlp: str = "gelu"  # "gelu" | "swiglu"
    norm_eps: float = 1e-5  # the LayerNorms' and the group norm's
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    # training
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        def fail(problem: str):
            raise ValueError(f"RetNetConfig {self.name!r}: {problem}")

        for key in ("vocab_size", "n_layer", "n_head", "n_embd", "value_factor", "max_seq_len"):
            if getattr(self, key) <= 0:
                fail(f"{key} must be positive, got {getattr(self, key)}")
        if self.chunk_size <= 0:
            fail(f"chunk_size must be positive, got {self.chunk_size}")
        if self.n_embd % self.n_head:
            fail(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.head_dim % 2:
            fail(f"head dim n_embd / n_head = {self.head_dim} must be even (rotary pairs)")
        if self.mlp not in ("gelu", "swiglu"):
            fail(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.intermediate_size is None:
            # SwiGLU has three matrices instead of two: 2/3 of the width keeps the parameter count.
            wide = 2 * self.n_embd if self.mlp == "gelu" else int(4 * self.n_embd / 3)
            self.intermediate_size = -(-wide // 64) * 64  # round up to a multiple of 64
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def value_dim(self) -> int:
        return self.value_factor * self.n_embd


# ---- Helpers: decays, rotary embedding, the decay mask -----------------------------------------------------

def log_gammas(n_head: int, device=None) -> torch.Tensor:
    """log gamma_h (nh,), gamma_h = 1 - 2 ** (-5 - h): from 0.969 (a short memory) to ~1 (a long one)."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_head, device=device, dtype=torch.float64)))).float()


def rotary_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_seq_len, dk) in fp32 for rotate(); sin carries rotate-half's minus sign."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.cat((freqs, freqs), -1).cos(), torch.cat((-freqs.sin(), freqs.sin()), -1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (..., dk): dim i pairs with i + dk/2."""
    half = x.size(-1) // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin


def decay_mask(log_gamma: torch.Tensor, T: int, keep: Optional[torch.Tensor] = None,
               segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """D (nh, T, T), or (B, nh, T, T) with keep or segment_ids: gamma ** (n - m) where m <= n, else 0.

    keep (B, T) is 1 for real tokens and 0 for padding keys; segment_ids (B, T) also zero D between
    segments (and on segment 0, padding).
    """
    n = torch.arange(T, device=log_gamma.device)
    distance = (n[:, None] - n[None, :]).float()  # (T, T)
    D = torch.exp(distance.clamp(min=0) * log_gamma[:, None, None]) * (distance >= 0)  # (nh, T, T)
    if segment_ids is not None:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)  # (B, T, T)
        D = D * same[:, None]  # (B, nh, T, T)
    if keep is not None:
        D = D * keep[:, None, None, :]  # (B, nh, T, T)
    return D


# ---- The three forms of retention --------------------------------------------------------------------------
# q, k (B, nh, T, dk), q already scaled by dk ** -0.5 and both rotated; v (B, nh, T, dv). A state is
# (S, z, c): S (B, nh, dk, dv) = sum_m gamma ** (n - m) k_m^T v_m, z (B, nh, 1, dk) the same sum of k_m,
# c (B, nh, 1, 1) the same sum of 1 (of the kept tokens): everything retention needs from the past.

def parallel_retention(q, k, v, D):
    """Eq. (5) with section 3.2's normalisations: (Q K^T * D~) V, row-normalised; D from decay_mask."""
    c = D.sum(-1, keepdim=True)  # (…, nh, T, 1)
    R = (q @ k.transpose(-1, -2)) * (D * c.clamp(min=1).rsqrt())  # (B, nh, T, T); c >= 1 but for padding
    return (R @ v) / R.sum(-1, keepdim=True).abs().clamp(min=1)  # (B, nh, T, dv)


def recurrent_retention(q, k, v, log_gamma, state, keep: Optional[torch.Tensor] = None):
    """Eq. (6) for one token (T = 1): (o, the new state). keep (B,) is 0 for a padding token, which then
    leaves the state as it was (decayed, but a state that holds only padding is 0)."""
    S, z, c = state
    gamma = log_gamma.exp().to(q.dtype)[:, None, None]  # (nh, 1, 1)
    one = 1.0
    if keep is not None:
        keep = keep.to(k.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        k, one = k * keep, keep
    S = gamma * S + k.transpose(-1, -2) @ v  # (B, nh, dk, dv)
    z = gamma * z + k
    c = gamma * c + one
    scale = c.clamp(min=1).rsqrt()
    o = (q @ S) * scale  # (B, nh, 1, dv)
    return o / ((q * z).sum(-1, keepdim=True) * scale).abs().clamp(min=1), (S, z, c)


def chunkwise_retention(q, k, v, log_gamma, state, chunk_size: int, keep: Optional[torch.Tensor] = None):
    """Eq. (7): each chunk of chunk_size tokens in the parallel form plus what the state carries in, then
    the state moved to the chunk's end. Returns (o, the new state); keep (B, T) as in decay_mask."""
    S, z, c = state
    outputs, T = [], q.size(2)
    for start in range(0, T, chunk_size):
        L = min(chunk_size, T - start)
        qc, kc, vc = (t[:, :, start:start + L] for t in (q, k, v))  # (B, nh, L, d)
        D = decay_mask(log_gamma, L, None if keep is None else keep[:, start:start + L]).to(q.dtype)  # (…, nh, L, L)
        j = torch.arange(1, L + 1, device=q.device, dtype=log_gamma.dtype)
        carried = torch.exp(j[:, None] * log_gamma[:, None, None]).to(q.dtype)  # gamma ** (j+1): (nh, L, 1)
        c_n = D.sum(-1, keepdim=True) + carried * c  # (B, nh, L, 1)
        z_n = D @ kc + carried * z  # (B, nh, L, dk): the decayed sum of keys each query sees
        scale = c_n.clamp(min=1).rsqrt()
        o = ((qc @ kc.transpose(-1, -2)) * D) @ vc + carried * (qc @ S)  # (B, nh, L, dv)
        o = o * scale / ((qc * z_n).sum(-1, keepdim=True) * scale).abs().clamp(min=1)
        outputs.append(o)
        last = D[..., L - 1:, :]  # gamma ** (L-1-m) for each key m (0 for padding): (…, nh, 1, L)
        gamma_L = carried[:, L - 1:]  # gamma ** L: (nh, 1, 1)
        S = gamma_L * S + (kc.transpose(-1, -2) * last) @ vc
        z = gamma_L * z + last @ kc
        c = gamma_L * c + last.sum(-1, keepdim=True)
    return torch.cat(outputs, dim=2), (S, z, c)


def empty_state(batch_size, n_head, head_dim, value_head_dim, device=None, dtype=None) -> tuple:
    """(S, z, c) of one layer before any token: zeros."""
    def zeros(*shape):
        return torch.zeros(batch_size, n_head, *shape, device=device, dtype=dtype)

    return zeros(head_dim, value_head_dim), zeros(1, head_dim), zeros(1, 1)


class RetentionState:
    """The recurrent state of every layer: `layers[i]` is layer i's (S, z, c), see above; `pos` counts the
    positions consumed. Its size does not depend on how many: nothing grows while decoding. Make one with
    RetNet.make_kv_cache; RetNet.hidden_states(..., kv_cache=state) reads it and replaces it."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, value_head_dim, device=None, dtype=None):
        self.layers = [empty_state(batch_size, n_head, head_dim, value_head_dim, device, dtype)
                       for _ in range(n_layer)]
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.layers[0][0].size(0)


# ---- Retention -> FFN -> Block -> RetNet --------------------------------------------------------------------

class MultiScaleRetention(nn.Module):
    """Retention per head (each its own gamma), group norm, swish gate, output projection."""

    def __init__(self, config: RetNetConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.chunk_size = layer_idx, config.chunk_size
        self.n_head, self.head_dim, self.value_dim = config.n_head, config.head_dim, config.value_dim
        self.qkvg = nn.Linear(config.n_embd, 2 * config.n_embd + 2 * config.value_dim, bias=False)
        self.group_norm = nn.GroupNorm(config.n_head, config.value_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(config.value_dim, config.n_embd, bias=False)

    def forward(self, x, rope, log_gamma, D, keep, state: Optional[RetentionState]):
        B, T, C = x.shape
        nh, dk, Cv = self.n_head, self.head_dim, self.value_dim
        qk, v, g = self.qkvg(x).split([2 * C, Cv, Cv], dim=-1)
        qk = rotate(qk.view(B, T, 2 * nh, dk), *rope).transpose(1, 2)  # (B, 2nh, T, dk)
        q, k = qk[:, :nh] * dk**-0.5, qk[:, nh:]  # (B, nh, T, dk)
        v = v.view(B, T, nh, Cv // nh).transpose(1, 2)  # (B, nh, T, dv)
        if D is not None:  # no state, a short sequence or packed rows: hidden_states made the decay mask
            o = parallel_retention(q, k, v, D)
        else:  # a state to continue, or a sequence longer than chunk_size (from an empty state)
            past = state.layers[self.layer_idx] if state is not None else \
                empty_state(B, nh, dk, Cv // nh, x.device, q.dtype)
            if T == 1:
                o, past = recurrent_retention(q, k, v, log_gamma, past, None if keep is None else keep[:, 0])
            else:
                o, past = chunkwise_retention(q, k, v, log_gamma, past, self.chunk_size, keep)
            if state is not None:
                state.layers[self.layer_idx] = past
        o = self.group_norm(o.transpose(1, 2).reshape(B * T, Cv)).view(B, T, Cv)  # (B, T, Cv)
        return self.o_proj(F.silu(g) * o)


class FFN(nn.Module):
    """GELU: down(gelu(up(x))). SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config: RetNetConfig, layer_idx: int):
        super().__init__()
        self.retention_norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.retention = MultiScaleRetention(config, layer_idx)
        self.ffn_norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.ffn = FFN(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, log_gamma, D, keep, state):
        r = self.retention(self.retention_norm(x), rope, log_gamma, D, keep, state)
        if self.training:  # eval skips the Dropout calls: each module call costs real time when decoding
            r = self.dropout(r)
        x = x + r
        f = self.ffn(self.ffn_norm(x))
        if self.training:
            f = self.dropout(f)
        return x + f


class RetNet(nn.Module):
    """Token embedding -> n_layer Blocks -> final LayerNorm -> lm_head; the same interface as Decoder."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.register_buffer("log_gamma", torch.empty(0), persistent=False)
        self.init_buffers()
        self.init_weights()  # built under models.meta.on_meta(), the random fills are skipped

    def init_buffers(self):
        """Set up what the state dict does not hold: rotary tables, decays, the lm_head/wte tie. Call it
        again after `to_empty()`."""
        c, device = self.config, self.wte.weight.device
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if self.wte.weight.is_meta:  # a model about to be loaded: to_empty(), then this again, make them
            return
        self.rope_cos, self.rope_sin = rotary_tables(c.head_dim, c.max_seq_len, c.rope_theta, device)
        self.log_gamma = log_gammas(c.n_head, device)

    @torch.no_grad()
    def init_weights(self):
        """All random initialisation (GPT-2 style, as Decoder): weights ~ N(0, init_std), the two projections
        into the residual stream scaled down by sqrt(2 * n_layer), norms at weight 1 and bias 0."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.retention.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.down_proj.weight, mean=0.0, std=residual_std)

    def make_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> RetentionState:
        """An empty RetentionState for `batch_size` sequences (named as Decoder's KV cache, so that
        rafale.models.generate drives both). Its size does not depend on max_len, which is only checked."""
        if max_len > self.config.max_seq_len:
            raise ValueError(f"max_len {max_len} is larger than the model's max_seq_len {self.config.max_seq_len}")
        c, weight = self.config, self.wte.weight
        return RetentionState(c.n_layer, batch_size, c.n_head, c.head_dim, c.value_dim // c.n_head,
                              device=device or weight.device, dtype=dtype or weight.dtype)

    def hidden_states(self, input_ids, *, position_ids=None, attention_mask=None, segment_ids=None, kv_cache=None):
        """Final-normed hidden states (B, T, n_embd) of input_ids (B, T); the arguments are Decoder's.

        Args:
            position_ids: (B, T) rotary positions; default start, start+1, ... (start: the state's pos).
            attention_mask: (B, S) 1 for real tokens, 0 for padding, over every position so far; padding
                stays out of the state.
            segment_ids: (B, T) packed rows, without attention_mask or kv_cache: each segment (1, 2, ...;
                0 is padding) is retained as if alone. Always the parallel form.
            kv_cache: a RetentionState from make_kv_cache, continued from its pos and replaced: one token
                takes the recurrent form, more (a prompt) the chunkwise one.
        Without a state, up to chunk_size tokens take the parallel form and longer sequences the chunkwise one.
        """
        B, T = input_ids.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if kv_cache is not None and B != kv_cache.batch_size:
            raise ValueError(f"the state holds {kv_cache.batch_size} rows; cannot add {B}")
        if start + T > self.config.max_seq_len:
            raise ValueError(f"cannot retain {start + T} positions, max_seq_len is only {self.config.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, start + T):
            raise ValueError(f"attention_mask must be (B, S) = {(B, start + T)}, got {tuple(attention_mask.shape)}")
        if segment_ids is not None and (segment_ids.shape != (B, T) or attention_mask is not None
                                        or kv_cache is not None):
            raise ValueError(f"segment_ids must be (B, T) = {(B, T)}, without attention_mask or kv_cache")

        x = self.wte(input_ids)
        if position_ids is None:
            cos, sin = self.rope_cos[start:start + T, None], self.rope_sin[start:start + T, None]  # (T, 1, dk)
        else:
            cos, sin = self.rope_cos[position_ids][:, :, None], self.rope_sin[position_ids][:, :, None]  # (B, T, 1, dk)
        rope = (cos.to(x.dtype), sin.to(x.dtype))
        keep = None if attention_mask is None else attention_mask[:, start:].to(x.dtype)  # (B, T)
        D = None  # the parallel form's decay mask, shared by all layers
        if kv_cache is None and (T <= self.config.chunk_size or segment_ids is not None):
            D = decay_mask(self.log_gamma, T, keep, segment_ids).to(x.dtype)
        for block in self.blocks:
            x = block(x, rope, self.log_gamma, D, keep, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.norm(x)

    def forward(self, input_ids, *, position_ids=None, attention_mask=None, segment_ids=None, kv_cache=None):
        """Logits (B, T, vocab_size); the arguments are those of hidden_states."""
        h = self.hidden_states(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               segment_ids=segment_ids, kv_cache=kv_cache)
        return self.lm_head(h)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count; a tied matrix counts once. exclude_embedding drops wte and lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.wte.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n
