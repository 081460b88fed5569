"""BERT and RoBERTa encoders: one backbone, a masked-LM head and a sequence-classification head.

Mirrors transformers' `models/bert/modeling_bert.py` and `models/roberta/modeling_roberta.py` closely
enough that their safetensors load through a flat name map (`encoder_weights.py`) and the logits agree
to 1e-5 in fp32 (`tests/models/test_encoder.py`). Notable choices:

- Post-LN blocks, as in BERT: x = LN(x + attn(x)), then x = LN(x + mlp(x)); exact (erf) GELU.
- Attention is torch's `scaled_dot_product_attention` (through models/attention.py). Padding keys are
  hidden from every query with a (B, 1, 1, T) boolean mask built from the usual (B, T) 1/0
  `attention_mask`; pad queries still produce outputs (as in HF), which losses and poolers ignore.
- RoBERTa is BERT with other data plus two switches:
  `position_offset`: 0 for BERT (positions 0..T-1); pad_token_id + 1 for RoBERTa, whose positions count
  only non-pad tokens and start after the pad id (fairseq's scheme), so pads sit on position pad_token_id.
  `classifier`: "bert" pools [CLS] with dense + tanh (HF's `pooler`), then dropout + linear; "roberta"
  does the same math on <s> with one more dropout before the dense (HF's `classifier.dense/out_proj`).
  Both use the `pooler` and `classifier` modules below; the weight map does the renaming.
- The MLM decoder shares its weight with the word embeddings and has its own bias, like HF.
- Left out: cross-attention, KV cache, relative position embeddings, BERT's next-sentence head.

Shape legend: B batch, T sequence length, C n_embd, nh n_head, hs head size (C // nh), V vocab size,
L num_labels.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rafale.models.attention import sdpa


@dataclass
class EncoderConfig:
    """Sizes and switches of a BERT/RoBERTa encoder. Registry entries are dicts of these fields."""

    name: str = "encoder"
    # sizes
    vocab_size: int = 30522
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int | None = None  # None: 4 * n_embd
    max_seq_len: int = 512  # usable tokens; the position table has max_seq_len + position_offset rows
    type_vocab_size: int = 2  # BERT's sentence A/B embeddings; RoBERTa keeps a single row
    # tokens and positions
    pad_token_id: int = 0
    position_offset: int = 0  # 0: BERT; pad_token_id + 1: RoBERTa (positions count non-pad tokens)
    # regularisation and init
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    init_std: float = 0.02
    # classification head
    num_labels: int = 2
    classifier: str = "bert"  # "bert" | "roberta": where the head's dropout sits (see module docstring)

    def __post_init__(self):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        sizes = ("vocab_size", "n_layer", "n_head", "n_embd", "intermediate_size", "max_seq_len",
                 "type_vocab_size", "num_labels")
        for key in sizes:
            if getattr(self, key) < 1:
                raise ValueError(f"encoder config '{self.name}': {key} must be >= 1, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"encoder config '{self.name}': n_embd {self.n_embd} is not divisible by "
                             f"n_head {self.n_head}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"encoder config '{self.name}': pad_token_id {self.pad_token_id} is outside "
                             f"the vocabulary [0, {self.vocab_size})")
        if self.position_offset not in (0, self.pad_token_id + 1):
            raise ValueError(f"encoder config '{self.name}': position_offset must be 0 (BERT) or "
                             f"pad_token_id + 1 = {self.pad_token_id + 1} (RoBERTa), got {self.position_offset}")
        if self.classifier not in ("bert", "roberta"):
            raise ValueError(f"encoder config '{self.name}': classifier must be 'bert' or 'roberta', "
                             f"got '{self.classifier}'")
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"encoder config '{self.name}': {key} must be in [0, 1), "
                                 f"got {getattr(self, key)}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_positions(self) -> int:
        """Rows of the position embedding table (HF's max_position_embeddings)."""
        return self.max_seq_len + self.position_offset


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.attn_dropout = config.attn_dropout
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
                   for lin in (self.query, self.key, self.value))
        dropout_p = self.attn_dropout if self.training else 0.0
        y = sdpa(q, k, v, mask, False, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Post-LN: each sublayer's output is dropped out, added to its input, then normalised."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.drop(self.attn(x, mask)))
        x = self.ln_2(x + self.drop(self.mlp(x)))
        return x


def init_weights(model: nn.Module, config: EncoderConfig) -> None:
    """Initialise every parameter of an encoder model in place, as HF's BertPreTrainedModel does.

    Linear and embedding weights are normal(0, config.init_std), biases zero, LayerNorms identity. The
    pad rows of the word (and, for RoBERTa, position) embeddings are zeroed last, so that the MLM
    decoder, which shares the word embedding weight, cannot overwrite them. Every model calls this at the
    end of its __init__ (a head model re-initialises its backbone too, which is cheap and keeps one code path).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    backbone = model if isinstance(model, Encoder) else model.encoder
    with torch.no_grad():
        backbone.word_embeddings.weight[config.pad_token_id].zero_()
        if config.position_offset:
            backbone.position_embeddings.weight[config.pad_token_id].zero_()


class Encoder(nn.Module):
    """The backbone: embeddings, then n_layer blocks. Returns the last hidden states (B, T, C)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        # RoBERTa's pad position is a fixed zero row, like its pad token: padding_idx keeps both out of training
        position_pad = config.pad_token_id if config.position_offset else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.n_positions, config.n_embd, padding_idx=position_pad)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.ln_emb = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        init_weights(self, config)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.config.position_offset == 0:
            return torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)  # (1, T)
        not_pad = input_ids.ne(self.config.pad_token_id).long()
        return torch.cumsum(not_pad, dim=1) * not_pad + self.config.pad_token_id  # (B, T)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.size(1) > self.config.max_seq_len:
            raise ValueError(f"Cannot attend to {input_ids.size(1)} tokens, max_seq_len is only "
                             f"{self.config.max_seq_len}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        x = x + self.position_embeddings(self.position_ids(input_ids))
        x = self.drop(self.ln_emb(x))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for block in self.layers:
            x = block(x, mask)
        return x


class EncoderForMaskedLM(nn.Module):
    """Backbone + HF's prediction head: dense, GELU, LayerNorm, then a decoder tied to the word embeddings."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size)
        self.decoder.weight = self.encoder.word_embeddings.weight
        init_weights(self, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder(input_ids, attention_mask, token_type_ids)
        x = self.ln(F.gelu(self.dense(x)))
        return self.decoder(x)  # (B, T, V)


class EncoderForSequenceClassification(nn.Module):
    """Backbone + a head on the first token ([CLS] / <s>): dense + tanh, dropout, linear to num_labels."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.pooler = nn.Linear(config.n_embd, config.n_embd)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.drop = nn.Dropout(config.dropout)
        init_weights(self, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, C)
        if self.config.classifier == "roberta":
            x = self.drop(x)
        x = torch.tanh(self.pooler(x))
        return self.classifier(self.drop(x))  # (B, L)
