"""A Decoder's one-token step for generation: few ops, fixed shapes, eager or compiled.

generate() runs the prompt through Decoder.hidden_states, then calls a DecodeStep once per new token. A
step of a small model costs its number of ops, not its arithmetic, so this step does the same maths as
Decoder's blocks (tests/models check the tokens) with less around it:
- activations stay 2-D (B, C), weights are read once into (in, out) matrices (a transposed copy up to
  WEIGHT_COPY_MAX_BYTES: a few rows times an (in, out) matrix is up to 2x faster on CPU than F.linear), and
  the rope rows and the attention mask are made once per step, not per layer;
- the new keys and values are written into the preallocated KVCache at a position given as a tensor.

Eager, it attends to the filled positions only (and passes no mask without padding). Compiled
(`torch.compile(dynamic=False)`, CUDA graphs on a GPU), it attends over the whole cache with a mask, so
every step has the same shapes and one graph serves every position. On CPU the compiled step measured no
faster than this eager one, after 13 s (warm) to 90 s (cold) of compiling; generate() decides when it pays.
"""

from __future__ import annotations

import sys
import weakref
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rafale.models.decoder import Decoder, KVCache

WEIGHT_COPY_MAX_BYTES = 256 * 2**20  # above this, read (out, in) weights through a transposed view


def supports(model) -> bool:
    """True for a plain Decoder in eval mode (not RetNet, not LoRA-wrapped): this step reproduces it."""
    if not isinstance(model, Decoder) or model.training:
        return False
    linears = [m for m in model.blocks.modules() if isinstance(m, nn.Linear) or "Linear" in type(m).__name__]
    return all(type(m) is nn.Linear for m in linears)


class Weights:
    """One layer's tensors in the layouts the step uses; `w_*` are (in, out) matrices, `b_*` biases or None."""

    def __init__(self, block, copy: bool):
        def mat(linear):  # (in, out); a contiguous copy is the fast layout, the view costs no memory
            return linear.weight.t().contiguous() if copy else linear.weight.t()

        attn, mlp = block.attn, block.mlp
        self.ln1, self.ln2 = block.input_layernorm, block.post_attention_layernorm
        self.w_qkv, self.b_qkv = mat(attn.qkv), attn.qkv.bias
        self.w_o, self.b_o = mat(attn.o_proj), attn.o_proj.bias
        self.w_gate = mat(mlp.gate_proj) if mlp.swiglu else None
        self.b_gate = mlp.gate_proj.bias if mlp.swiglu else None
        self.w_up, self.b_up = mat(mlp.up_proj), mlp.up_proj.bias
        self.w_down, self.b_down = mat(mlp.down_proj), mlp.down_proj.bias


def pack_head(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The output head (V, C) in oneDNN's prepacked layout, or None where there is none (not a CPU fp32
    weight, no oneDNN). For a few rows (2-16) it is 2-4x faster than any matmul layout here (pythia-14m
    head, 8 rows: 0.3 vs 0.9-1.1 ms) and gives the same logits to rounding; for one row it is no faster."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
        torch.ops.mkldnn._linear_pointwise(weight.new_zeros(2, weight.size(1)), packed, None, "none", [None], "")
        return packed
    except (AttributeError, RuntimeError):  # a torch without these ops: the matmul serves
        return None


def linear(x, w, b):
    return torch.addmm(b, x, w) if b is not None else x @ w


def norm(x, module):
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    return F.rms_norm(x, module.normalized_shape, module.weight, module.eps)


class DecodeStep:
    """Logits (B, V) of one new token per row, written into `cache` at its position.

        step = DecodeStep.for_model(model)
        logits = step(cache, tokens, positions, key_mask)   # after the prompt filled cache up to cache.pos

    Built once per model and reused (`for_model`): the weight copies and a compiled graph outlive one
    generation. `compile()` switches to the fixed-shape compiled form; a compiler that fails prints one
    warning line and the step stays eager.
    """

    def __init__(self, model: Decoder):
        c = model.config
        self.config = c  # tensors and modules of the model, never the model: _STEPS holds it weakly
        self.wte, self.final_norm = model.wte.weight, model.norm
        self.rope_cos, self.rope_sin, self.rope_perm = model.rope_cos, model.rope_sin, model.rope_perm
        n_bytes = sum(p.nbytes for p in model.blocks.parameters()) + model.lm_head.weight.nbytes
        copy = model.lm_head.weight.device.type == "cpu" and n_bytes <= WEIGHT_COPY_MAX_BYTES
        self.layers = [Weights(block, copy) for block in model.blocks]
        self.head = model.lm_head.weight.t().contiguous() if copy else model.lm_head.weight.t()
        self.head_packed = pack_head(model.lm_head.weight) if copy else None
        self.versions = self._versions(model)
        self.compiled = None
        self.caches: dict[tuple, KVCache] = {}

    @staticmethod
    def _versions(model) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in model.parameters())

    @classmethod
    def for_model(cls, model: Decoder) -> "DecodeStep":
        """The model's step, rebuilt only when its weights changed in place since (training between calls)."""
        step = _STEPS.get(model)
        if step is None or step.versions != cls._versions(model):
            step = _STEPS[model] = cls(model)
        return step

    def cache(self, model: Decoder, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache of these sizes, the same buffers every time: a compiled graph (a CUDA graph
        above all) reads them where it recorded them, and nothing is allocated or zeroed per generation."""
        key = (batch_size, max_len)
        if key not in self.caches:
            cache = self.caches[key] = model.make_kv_cache(batch_size, max_len)
            if cache.k.device.type == "cuda":
                torch._dynamo.mark_static_address(cache.k)
                torch._dynamo.mark_static_address(cache.v)
        self.caches[key].pos = 0
        return self.caches[key]

    def compile(self, backend: str = "inductor") -> bool:
        """Use the compiled form from now on (CUDA graphs on a GPU); False if compiling is unavailable."""
        if self.compiled is None:
            cuda = self.head.device.type == "cuda" and backend == "inductor"
            try:
                self.compiled = torch.compile(self.forward, dynamic=False, fullgraph=True, backend=backend,
                                              mode="reduce-overhead" if cuda else None)
            except Exception as e:  # noqa: BLE001 (torch raises many kinds)
                self._failed(e)
        return self.compiled is not False

    def _failed(self, e: Exception) -> None:
        sys.stderr.write(f"warning: compiling the decoding step failed ({type(e).__name__}); decoding eagerly\n")
        self.compiled = False

    def __call__(self, cache: KVCache, tokens: torch.Tensor, positions: Optional[torch.Tensor],
                 key_mask: Optional[torch.Tensor], compiled: bool = False) -> torch.Tensor:
        """Decode `tokens` (B,) at cache.pos, then advance it.

        positions: (B,) rope positions of the new tokens (left-padded rows count real tokens only), or
        None for cache.pos. key_mask: (B, cache.max_len) bool, False for padding keys, or None.
        """
        pos = cache.pos
        at = torch.tensor([pos], device=tokens.device)
        rope_pos = at if positions is None else positions
        if compiled and self.compiled:
            valid = torch.arange(cache.max_len, device=tokens.device) <= at
            mask = valid if key_mask is None else key_mask & valid  # (L,) or (B, L)
            try:
                logits = self.compiled(cache.k, cache.v, tokens, rope_pos, at, cache.max_len, mask)
                cache.pos += 1
                return logits
            except Exception as e:  # noqa: BLE001 (no compiler, an unsupported op): correct, only slower
                self._failed(e)
        mask = None if key_mask is None else key_mask[:, :pos + 1]
        logits = self.forward(cache.k, cache.v, tokens, rope_pos, at, pos + 1, mask)
        cache.pos += 1
        return logits

    def forward(self, k_cache, v_cache, tokens, rope_pos, at, n_keys: int, mask):
        """The step as a function of tensors: write at `at`, attend to the first n_keys positions."""
        c = self.config
        B, nh, nkv, hs = tokens.size(0), c.n_head, c.n_kv_head, c.head_dim
        x = F.embedding(tokens, self.wte)  # (B, C)
        cos = self.rope_cos[rope_pos].to(x.dtype)[:, None]  # (B or 1, 1, hs)
        sin = self.rope_sin[rope_pos].to(x.dtype)[:, None]
        if mask is not None:
            mask = mask.view(-1, 1, 1, mask.size(-1))  # (B or 1, 1, 1, S)
        for i, w in enumerate(self.layers):
            h = norm(x, w.ln1)
            qkv = linear(h, w.w_qkv, w.b_qkv).view(B, nh + 2 * nkv, hs)
            qk = qkv[:, :nh + nkv]
            qk = qk * cos + qk.index_select(-1, self.rope_perm) * sin  # rope on q and k heads together
            k_all, v_all = k_cache[i], v_cache[i]  # (B, nkv, L, hs)
            k_all.index_copy_(2, at, qk[:, nh:, None].to(k_all.dtype))  # .to: a no-op but under autocast
            v_all.index_copy_(2, at, qkv[:, nh + nkv:, None].to(v_all.dtype))
            q = qk[:, :nh].view(B, nkv, nh // nkv, hs)  # each kv head's query group in place of positions
            y = F.scaled_dot_product_attention(q, k_all.narrow(2, 0, n_keys), v_all.narrow(2, 0, n_keys),
                                               attn_mask=mask)
            a = linear(y.view(B, c.n_embd), w.w_o, w.b_o)
            h = x if c.parallel_residual else x + a
            u = norm(h, w.ln2)
            if w.w_gate is not None:
                u = F.silu(linear(u, w.w_gate, w.b_gate)) * linear(u, w.w_up, w.b_up)
            else:
                u = F.gelu(linear(u, w.w_up, w.b_up))
            x = (x + a if c.parallel_residual else h) + linear(u, w.w_down, w.b_down)
        x = norm(x, self.final_norm)
        if B > 1 and self.head_packed is not None and x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, self.head_packed, None, "none", [None], "")
        return x @ self.head


_STEPS: "weakref.WeakKeyDictionary[Decoder, DecodeStep]" = weakref.WeakKeyDictionary()
