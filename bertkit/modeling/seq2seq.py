"""The encoder-decoder Transformer (Vaswani et al., 2017, "Attention Is All You Need"). Its
generation (greedy, beam search, sampling, the key/value cache) is
:mod:`bertkit.modeling.generation`, shared with the decoder-only LM; :meth:`generate` binds
the encoded sources to it.

Shapes use this legend:

    B  batch size (sources)      S  source length          T  target (decoder input) length
    K  beams per source          R  sequences returned per source
    H  d_model                   N  heads                  D  head size (H / N)
    V  vocabulary size           P  target positions already in the cache

Attention itself is :func:`bertkit.modeling.layers.attention` (one implementation in the
package); this module only arranges the projections and caches around it. Where this file
follows the paper and where it offers something else:

- embeddings are multiplied by sqrt(d_model) and summed with sinusoidal position encodings
  (paper, section 3.4-3.5); ``position_encoding="learned"`` is the option;
- post-LN sub-layers, ``LayerNorm(x + Dropout(Sublayer(x)))`` (paper); ``norm="pre"`` is the
  option, ``x + Dropout(Sublayer(LayerNorm(x)))`` with a final LayerNorm on each stack (more
  stable without a warmup; not the paper);
- source, target and output embeddings share one matrix when the vocabulary is shared
  (paper, section 3.4);
- label-smoothed cross-entropy, eps = 0.1 (paper, section 5.4), with torch's definition: the
  target distribution is (1 - eps) on the gold token plus eps / V on every token.

Generation uses the GNMT length penalty (Wu et al., 2016): ``lp(L) = ((5 + L) / 6) ** alpha``,
and ranks hypotheses by ``sum of token log-probs / lp(L)`` (L counts generated tokens, eos
included).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from bertkit.checkpoint import WEIGHTS_NAME, from_hf_name, read_state_dict
from bertkit.config import (CONFIG_NAME, SIZE_LIMITS, BertConfig, FieldChecker,
                            config_from_file, read_config_file, write_config_file)
from bertkit.modeling.bert import IGNORE_INDEX
# KVCache, LayerCache, length_penalty and sample_next_tokens are also this module's names
# (they lived here before generation.py was shared).
from bertkit.modeling.generation import (Decoder, GenerationOutput, GenerationSettings, KVCache,
                                         LayerCache, length_penalty, rows_per_input,
                                         run_decoding, sample_next_tokens)
from bertkit.modeling.layers import (ACTIVATIONS, FeedForward, SelfAttention, attention,
                                     causal_mask_bias, init_transformer_weights, merge_heads,
                                     padding_mask_bias, split_heads)
from bertkit.outputs import as_user_file
from bertkit.tokenizer import Tokenizer

MODEL_TYPE = "bertkit-seq2seq"

POSITION_ENCODINGS = ("sinusoidal", "learned")
NORMS = ("post", "pre")
# The bound of each size, shared with BERT's (bertkit.config.SIZE_LIMITS).
SIZE_LIMIT_OF = {"vocab_size": "vocab_size", "d_model": "hidden_size",
                 "num_heads": "num_attention_heads", "encoder_layers": "num_hidden_layers",
                 "decoder_layers": "num_hidden_layers", "ffn_dim": "intermediate_size",
                 "max_position_embeddings": "max_position_embeddings"}

# Preset sizes. "base" and "big" are the paper's Table 3; "tiny" and "small" train on a CPU.
SEQ2SEQ_SIZES = {
    "tiny": dict(d_model=64, num_heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=256),
    "small": dict(d_model=256, num_heads=4, encoder_layers=3, decoder_layers=3, ffn_dim=1024),
    "base": dict(d_model=512, num_heads=8, encoder_layers=6, decoder_layers=6, ffn_dim=2048),
    "big": dict(d_model=1024, num_heads=16, encoder_layers=6, decoder_layers=6, ffn_dim=4096,
                dropout=0.3),
}


# ============================================================================ configuration
@dataclass
class Seq2SeqConfig:
    """Hyper-parameters of :class:`TransformerSeq2Seq`, saved as ``config.json`` with
    ``"model_type": "bertkit-seq2seq"``.

    ``vocab_size`` is the source vocabulary, and the target one too unless ``tgt_vocab_size``
    is set (separate vocabularies). ``share_embeddings`` ties the source, target and output
    embeddings (needs the shared vocabulary); ``tie_output_embeddings`` ties the target
    embedding with the output projection. ``scale_embedding`` (x sqrt(d_model), the paper) and
    ``layernorm_embedding`` (a LayerNorm after the embedding sum, as BERT has) exist so that an
    encoder can be initialised from BERT (see :meth:`from_bert`). The special ids default to a
    bertkit WordPiece vocabulary: [PAD]=0, bos=[CLS]=2, eos=[SEP]=3.
    """

    vocab_size: int = 8000
    tgt_vocab_size: int | None = None
    d_model: int = 512
    num_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"
    max_position_embeddings: int = 512
    position_encoding: str = "sinusoidal"
    norm: str = "post"
    layer_norm_eps: float = 1e-5
    share_embeddings: bool = True
    tie_output_embeddings: bool = True
    scale_embedding: bool = True
    layernorm_embedding: bool = False
    label_smoothing: float = 0.1
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    model_type: str = MODEL_TYPE
    # Every config.json key that is not a field above, kept verbatim and written back.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~bertkit.config.ConfigError` (a ``ValueError``) naming the offending
        field if the config cannot build a model."""
        check = FieldChecker("Seq2SeqConfig")

        def fail(name: str, rule: str) -> None:
            check.fail(name, f"{rule}, got {getattr(self, name)!r}")

        for name, limit in SIZE_LIMIT_OF.items():
            check.integer(name, getattr(self, name), SIZE_LIMITS[limit])
        if self.tgt_vocab_size is not None:
            check.integer("tgt_vocab_size", self.tgt_vocab_size, SIZE_LIMITS["vocab_size"])
        if self.d_model % self.num_heads:
            check.fail("d_model", f"({self.d_model}) must be divisible by num_heads "
                                  f"({self.num_heads})")
        self._check_parameter_count(check)
        if self.position_encoding not in POSITION_ENCODINGS:
            fail("position_encoding", f"must be one of {POSITION_ENCODINGS}")
        if self.position_encoding == "sinusoidal" and self.d_model % 2:
            fail("d_model", "must be even for sinusoidal position encodings")
        if self.norm not in NORMS:
            fail("norm", f"must be one of {NORMS}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            fail("activation", f"must be one of {tuple(ACTIVATIONS)}")
        for name in ("dropout", "attention_dropout", "label_smoothing"):
            check.fraction(name, getattr(self, name))
        check.positive("layer_norm_eps", self.layer_norm_eps)
        for name in ("share_embeddings", "tie_output_embeddings", "scale_embedding",
                     "layernorm_embedding"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")
        if self.share_embeddings and self.tgt_vocab_size not in (None, self.vocab_size):
            check.fail("share_embeddings", f"needs one vocabulary, but tgt_vocab_size "
                       f"({self.tgt_vocab_size}) differs from vocab_size ({self.vocab_size}); set "
                       "share_embeddings=False for separate vocabularies")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            smallest = min(self.vocab_size, self.target_vocab_size)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < smallest:
                fail(name, f"must be a token id below the vocabulary size ({smallest})")
        if self.model_type != MODEL_TYPE:
            fail("model_type", f"must be {MODEL_TYPE!r}")

    def _check_parameter_count(self, check: FieldChecker) -> None:
        d, ffn = self.d_model, self.ffn_dim
        rows = self.vocab_size + self.max_position_embeddings
        if not self.share_embeddings:
            rows += 2 * self.target_vocab_size  # target embedding and output projection
        layers = self.encoder_layers * (4 * d * d + 2 * d * ffn)
        layers += self.decoder_layers * (8 * d * d + 2 * d * ffn)  # self- and cross-attention
        check.parameter_count(rows * d + layers, {name: getattr(self, name) for name in (
            "vocab_size", "d_model", "encoder_layers", "decoder_layers", "ffn_dim",
            "max_position_embeddings")})

    @property
    def target_vocab_size(self) -> int:
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @property
    def shared_vocab(self) -> bool:
        return self.tgt_vocab_size is None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "Seq2SeqConfig":
        """A preset size, ``tiny|small|base|big`` (base and big: the paper's Table 3), with
        ``overrides`` (e.g. ``vocab_size=...``) applied on top."""
        if size not in SEQ2SEQ_SIZES:
            raise ValueError(f"unknown seq2seq model size {size!r}; choose one of "
                             f"{', '.join(SEQ2SEQ_SIZES)}")
        return cls(**{**SEQ2SEQ_SIZES[size], **overrides})

    @classmethod
    def from_bert(cls, bert: Any, **overrides: Any) -> "Seq2SeqConfig":
        """A config whose encoder has exactly the shape of a BERT encoder, for
        :meth:`TransformerSeq2Seq.init_encoder_from_bert`.

        ``bert`` is a :class:`~bertkit.config.BertConfig` or a BERT folder (then bos/eos are
        the folder's [CLS]/[SEP] ids when it has a ``vocab.txt``). The encoder is BERT's: post-LN,
        learned positions, unscaled embeddings with a LayerNorm, BERT's activation and eps; the
        decoder gets the same sizes unless ``overrides`` say otherwise (``decoder_layers=...``).
        """
        token_ids: dict[str, int] = {}
        if not isinstance(bert, BertConfig):
            folder = os.fspath(bert)
            bert = BertConfig.from_pretrained(folder)
            if os.path.isfile(os.path.join(folder, "vocab.txt")):
                tokenizer = Tokenizer.from_pretrained(folder)
                token_ids = dict(bos_token_id=tokenizer.cls_token_id,
                                 eos_token_id=tokenizer.sep_token_id)
        values = dict(
            vocab_size=bert.vocab_size, d_model=bert.hidden_size,
            num_heads=bert.num_attention_heads, encoder_layers=bert.num_hidden_layers,
            decoder_layers=bert.num_hidden_layers, ffn_dim=bert.intermediate_size,
            activation=bert.hidden_act, dropout=bert.hidden_dropout_prob,
            attention_dropout=bert.attention_probs_dropout_prob,
            max_position_embeddings=bert.max_position_embeddings, position_encoding="learned",
            norm="post", layer_norm_eps=bert.layer_norm_eps, share_embeddings=True,
            tie_output_embeddings=True, scale_embedding=False, layernorm_embedding=True,
            pad_token_id=bert.pad_token_id if bert.pad_token_id is not None else 0, **token_ids)
        values.update(overrides)
        return cls(**values)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Seq2SeqConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Seq2SeqConfig":
        """Read ``folder/config.json`` (or a path to a json file)."""
        path, data = read_config_file(folder)
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not a bertkit "
                             f"seq2seq model (expected {MODEL_TYPE!r})")
        return config_from_file(cls, data, path)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_config_file(self.to_dict(), folder)


# ============================================================================ outputs
@dataclass
class Seq2SeqOutput:
    loss: torch.Tensor | None           # scalar: label-smoothed CE per target token
    logits: torch.Tensor                # (B, T, V)
    encoder_last_hidden_state: torch.Tensor  # (B, S, H)


# ============================================================================ building blocks
def sinusoidal_position_encoding(num_positions: int, d_model: int) -> torch.Tensor:
    """The paper's encodings, (num_positions, d_model):
    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]       # (P, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = positions * inv_freq[None, :]                                       # (P, H/2)
    table = torch.zeros(num_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


class Seq2SeqEmbeddings(nn.Module):
    """Token embedding (x sqrt(H) when ``scale_embedding``) + position encoding starting at
    ``past_length``, optional LayerNorm, dropout. ``word_embeddings`` may be shared with the
    other side of the model (tied embeddings)."""

    def __init__(self, config: Seq2SeqConfig, word_embeddings: nn.Embedding,
                 sinusoids: torch.Tensor | None):
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.word_embeddings = word_embeddings
        self.position_embeddings = None
        if config.position_encoding == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.d_model)
        else:
            # Not persistent: a fixed function of the config, so not part of the checkpoint.
            self.register_buffer("sinusoids", sinusoids, persistent=False)
        self.norm = (nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
                     if config.layernorm_embedding else None)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """input_ids (B, T) at positions past_length ... past_length+T-1 -> (B, T, H)."""
        end = past_length + input_ids.size(1)
        if end > self.max_positions:
            raise ValueError(f"sequence needs {end} positions but the model has "
                             f"{self.max_positions} (max_position_embeddings); truncate the "
                             "input or lower max_length")
        positions = torch.arange(past_length, end, device=input_ids.device)        # (T,)
        if self.position_embeddings is not None:
            position_vectors = self.position_embeddings(positions)                  # (T, H)
        else:
            position_vectors = self.sinusoids[positions]                            # (T, H)
        hidden = self.word_embeddings(input_ids) * self.scale + position_vectors    # (B, T, H)
        if self.norm is not None:
            hidden = self.norm(hidden)
        return self.dropout(hidden)


class MultiHeadAttention(nn.Module):
    """Query/key/value projections around :func:`layers.attention`. Keys and values are
    projected by :meth:`keys_values` and passed to :meth:`forward`, so the decoder can cache
    them (self-attention: appended per step; cross-attention: computed once per source)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)

    def keys_values(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H) -> keys, values (B, N, S, D)."""
        return (split_heads(self.key(hidden), self.num_heads),
                split_heads(self.value(hidden), self.num_heads))

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        """hidden (B, T, H) attends over keys/values (B, N, S, D) -> context (B, T, H)."""
        query = split_heads(self.query(hidden), self.num_heads)                    # (B, N, T, D)
        dropout_p = self.dropout if self.training else 0.0
        context, _ = attention(query, keys, values, bias, dropout_p)               # (B, N, T, D)
        return merge_heads(context)                                                 # (B, T, H)


class Seq2SeqEncoderLayer(nn.Module):
    """Self-attention + feed-forward, post-LN (paper) or pre-LN. The module names are BERT's
    encoder layer's (``attention``, ``attention_output``, ``attention_norm``, ``ffn``,
    ``ffn_norm``), so BERT weights copy over name for name."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        d = config.d_model
        self.pre_norm = config.norm == "pre"
        self.attention = SelfAttention(d, config.num_heads, config.attention_dropout)
        self.attention_output = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = FeedForward(d, config.ffn_dim, config.activation)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """hidden (B, S, H), bias (B, 1, 1, S) or None -> (B, S, H)."""
        x = self.attention_norm(hidden) if self.pre_norm else hidden
        context, _ = self.attention(x, bias)                                        # (B, S, H)
        hidden = hidden + self.dropout(self.attention_output(context))
        if not self.pre_norm:
            hidden = self.attention_norm(hidden)
        x = self.ffn_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.dropout(self.ffn(x))                                 # (B, S, H)
        return hidden if self.pre_norm else self.ffn_norm(hidden)


class Seq2SeqDecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; each
    sub-layer post-LN (paper) or pre-LN. With a :class:`LayerCache`, self-attention keys/values
    are appended to it and cross-attention keys/values are computed once and reused."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        d = config.d_model
        self.pre_norm = config.norm == "pre"
        self.self_attention = MultiHeadAttention(d, config.num_heads, config.attention_dropout)
        self.self_attention_output = nn.Linear(d, d)
        self.self_attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.cross_attention = MultiHeadAttention(d, config.num_heads, config.attention_dropout)
        self.cross_attention_output = nn.Linear(d, d)
        self.cross_attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = FeedForward(d, config.ffn_dim, config.activation)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def _sublayer(self, hidden: torch.Tensor, norm: nn.LayerNorm, fn) -> torch.Tensor:
        if self.pre_norm:
            return hidden + self.dropout(fn(norm(hidden)))
        return norm(hidden + self.dropout(fn(hidden)))

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_bias: torch.Tensor | None,
                self_bias: torch.Tensor | None, cache: LayerCache | None) -> torch.Tensor:
        """hidden (B, T, H), memory (B, S, H), memory_bias (B, 1, 1, S) or None, self_bias
        (T, P+T) or None -> (B, T, H)."""

        def self_attend(x: torch.Tensor) -> torch.Tensor:
            keys, values = self.self_attention.keys_values(x)                      # (B, N, T, D)
            if cache is not None:
                keys, values = cache.append(keys, values)                           # (B, N, P+T, D)
            return self.self_attention_output(self.self_attention(x, keys, values, self_bias))

        def cross_attend(x: torch.Tensor) -> torch.Tensor:
            if cache is not None and cache.cross_keys is not None:
                keys, values = cache.cross_keys, cache.cross_values                 # (B, N, S, D)
            else:
                keys, values = self.cross_attention.keys_values(memory)             # (B, N, S, D)
                if cache is not None:
                    cache.cross_keys, cache.cross_values = keys, values
            return self.cross_attention_output(self.cross_attention(x, keys, values, memory_bias))

        hidden = self._sublayer(hidden, self.self_attention_norm, self_attend)      # (B, T, H)
        hidden = self._sublayer(hidden, self.cross_attention_norm, cross_attend)    # (B, T, H)
        return self._sublayer(hidden, self.ffn_norm, self.ffn)                      # (B, T, H)


class Seq2SeqEncoder(nn.Module):
    """Embeddings, ``encoder_layers`` encoder layers (and a final LayerNorm for pre-LN)."""

    def __init__(self, config: Seq2SeqConfig, embeddings: Seq2SeqEmbeddings):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(Seq2SeqEncoderLayer(config)
                                    for _ in range(config.encoder_layers))
        self.final_norm = (nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
                           if config.norm == "pre" else None)

    def forward(self, input_ids: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """input_ids (B, S), bias (B, 1, 1, S) or None -> (B, S, H)."""
        hidden = self.embeddings(input_ids)                                         # (B, S, H)
        for layer in self.layers:
            hidden = layer(hidden, bias)
        return self.final_norm(hidden) if self.final_norm is not None else hidden


class Seq2SeqDecoder(nn.Module):
    """Embeddings, ``decoder_layers`` decoder layers (and a final LayerNorm for pre-LN)."""

    def __init__(self, config: Seq2SeqConfig, embeddings: Seq2SeqEmbeddings):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(Seq2SeqDecoderLayer(config)
                                    for _ in range(config.decoder_layers))
        self.final_norm = (nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
                           if config.norm == "pre" else None)

    def forward(self, input_ids: torch.Tensor, memory: torch.Tensor,
                memory_bias: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) at positions P..P+T-1 (P = cache length), memory (B, S, H),
        memory_bias (B, 1, 1, S) or None -> (B, T, H)."""
        past = cache.length if cache is not None else 0
        length = input_ids.size(1)
        hidden = self.embeddings(input_ids, past)                                   # (B, T, H)
        # One new query sees every cached position: no mask, which lets SDPA use its fast path.
        # Decoder inputs are right-padded, so the causal mask alone keeps real positions off pads.
        self_bias = (None if length == 1 else
                     causal_mask_bias(length, hidden.dtype, hidden.device, past))  # (T, P+T)
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            hidden = layer(hidden, memory, memory_bias, self_bias, layer_cache)
        return self.final_norm(hidden) if self.final_norm is not None else hidden


# ============================================================================ the model
class TransformerSeq2Seq(nn.Module):
    """The encoder-decoder Transformer.

    ``forward(input_ids (B, S), attention_mask (B, S) 1=real 0=pad, decoder_input_ids (B, T),
    labels (B, T))`` returns a :class:`Seq2SeqOutput` with ``logits`` (B, T, V) and, with
    labels, the label-smoothed cross-entropy ``loss`` averaged over target tokens (labels equal
    to -100 or to ``pad_token_id`` are skipped). Without ``decoder_input_ids`` they are the
    labels shifted right behind ``bos_token_id`` (teacher forcing). A bertkit collator batch
    ``{input_ids, attention_mask, labels}`` is therefore all the Trainer needs.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        d, pad = config.d_model, config.pad_token_id
        source_words = nn.Embedding(config.vocab_size, d, padding_idx=pad)
        target_words = (source_words if config.share_embeddings
                        else nn.Embedding(config.target_vocab_size, d, padding_idx=pad))
        sinusoids = None
        if config.position_encoding == "sinusoidal":
            sinusoids = sinusoidal_position_encoding(config.max_position_embeddings, d)
        self.encoder = Seq2SeqEncoder(config, Seq2SeqEmbeddings(config, source_words, sinusoids))
        self.decoder = Seq2SeqDecoder(config, Seq2SeqEmbeddings(config, target_words, sinusoids))
        self.output_projection = (None if config.tie_output_embeddings
                                  else nn.Linear(d, config.target_vocab_size, bias=False))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform matrices and zero biases (as fairseq / the annotated Transformer);
        embeddings N(0, d_model^-0.5) so that scaled by sqrt(d_model) they have unit variance,
        with a zero padding row; unit LayerNorms."""
        init_transformer_weights(self, nn.init.xavier_uniform_, self.config.d_model ** -0.5)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ encode / decode
    def _memory_bias(self, attention_mask: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor | None:
        # No padding -> no mask at all, which lets SDPA take its fastest kernel.
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return padding_mask_bias(attention_mask, dtype)                             # (B, 1, 1, S)

    def encode(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S), attention_mask (B, S) or None -> encoder output (B, S, H)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        dtype = self.encoder.embeddings.word_embeddings.weight.dtype
        bias = self._memory_bias(attention_mask, dtype)                             # (B, 1, 1, S)
        return self.encoder(input_ids, bias)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.output_projection is not None:
            return self.output_projection(hidden)                                   # (B, T, V)
        return F.linear(hidden, self.decoder.embeddings.word_embeddings.weight)     # (B, T, V)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits.

        decoder_input_ids (B, T) are the target positions P..P+T-1, where P is the cache's
        length (0 without a cache); memory (B, S, H) is :meth:`encode`'s output and
        attention_mask (B, S) its source mask. With a cache, pass only the new tokens: their
        self-attention keys/values are appended to it. Returns logits (B, T, V).
        """
        bias = self._memory_bias(attention_mask, memory.dtype)                      # (B, 1, 1, S)
        return self._decode(decoder_input_ids, memory, bias, cache)

    def _decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
                memory_bias: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        return self._logits(self.decoder(decoder_input_ids, memory, memory_bias, cache))

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs: labels (B, T) -> (B, T) = [bos, labels[:, :-1]],
        with -100 replaced by pad."""
        shifted = labels.new_full(labels.shape, self.config.pad_token_id)
        shifted[:, 0] = self.config.bos_token_id
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.config.pad_token_id)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy per target token: logits (B, T, V), labels (B, T)
        (positions with -100 or pad skipped) -> scalar."""
        labels = labels.masked_fill(labels == self.config.pad_token_id, IGNORE_INDEX)
        if not bool((labels != IGNORE_INDEX).any()):
            return logits.sum() * 0.0  # nothing to predict: zero loss, graph kept for DDP
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, label_smoothing=self.config.label_smoothing)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Seq2SeqOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("TransformerSeq2Seq.forward needs decoder_input_ids or labels "
                                 "(decoder inputs are then the labels shifted right)")
            decoder_input_ids = self.shift_right(labels)
        memory = self.encode(input_ids, attention_mask)                             # (B, S, H)
        logits = self._decode(decoder_input_ids, memory,
                              self._memory_bias(attention_mask, memory.dtype), None)  # (B, T, V)
        loss = self.loss(logits, labels) if labels is not None else None
        return Seq2SeqOutput(loss, logits, memory)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_length: int | None = None, min_length: int = 0, num_beams: int = 1,
                 length_penalty: float = 1.0, early_stopping: bool = True,
                 num_return_sequences: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> GenerationOutput:
        """Generate target sequences for a batch of sources (the search itself is
        :mod:`bertkit.modeling.generation`, shared with the decoder-only LM).

        Args:
            input_ids, attention_mask: (B, S) source ids and 1/0 mask (padding anywhere).
            max_length: most generated tokens (eos included); default
                ``min(max_position_embeddings, 2 * S + 10)``.
            min_length: eos is forbidden (its probability set to 0 and the rest renormalised)
                until this many tokens have been generated.
            num_beams: 1 = greedy (or sampling); K > 1 = beam search with K beams per source.
            length_penalty: alpha of the GNMT penalty ``((5 + L) / 6) ** alpha`` by which beam
                hypotheses' summed log-probs are divided for ranking (0 = no normalisation).
            early_stopping: beam search stops for a source once K hypotheses have ended and
                no live beam scores better than the worst of them at its current length (exact
                for alpha <= 0; for alpha > 0 it ignores how much a longer hypothesis would
                gain from the penalty). With False, the search goes on while any live beam
                could still beat that hypothesis at max_length (an exact bound, since
                log-probs are <= 0). Unlike transformers' ``early_stopping=True``, K ended
                hypotheses alone never stop the search while a live beam is better: with a
                small beam that rule returns a worse hypothesis than greedy decoding.
            num_return_sequences: R best hypotheses per source (R <= K for beam search;
                independent samples when sampling; 1 for greedy).
            do_sample: sample each token from softmax(log-probs / temperature), restricted to
                the ``top_k`` most likely tokens (0 = all) and to the smallest set whose
                probability reaches ``top_p`` (nucleus); ``generator`` makes it reproducible.
            repetition_penalty: CTRL's penalty on target tokens already generated (1 = off).
            use_cache: decode incrementally with a :class:`KVCache`; False recomputes the whole
                prefix every step (same results, for checking and benchmarks).

        Returns:
            :class:`GenerationOutput`. ``scores`` are the model's log-probs of the generated
            tokens (after the min_length rule, before temperature/top-k/top-p), summed through
            eos; ``normalized_scores`` divide them by the length penalty.
        """
        config = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if max_length is None:
            max_length = min(config.max_position_embeddings, 2 * input_ids.size(1) + 10)
        settings = GenerationSettings(
            max_new_tokens=max_length, min_new_tokens=min_length, num_beams=num_beams,
            length_penalty=length_penalty, early_stopping=early_stopping,
            num_return_sequences=num_return_sequences, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, use_cache=use_cache)
        settings.check(config.max_position_embeddings, "max_length", "max_position_embeddings")
        was_training = self.training
        self.eval()  # dropout off: generation is inference
        try:
            copies = rows_per_input(settings)
            memory = self.encode(input_ids, attention_mask)                         # (B, S, H)
            memory_bias = self._memory_bias(attention_mask, memory.dtype)           # (B, 1, 1, S)
            if copies > 1:
                memory = memory.repeat_interleave(copies, dim=0)                    # (B*R, S, H)
                if memory_bias is not None:
                    memory_bias = memory_bias.repeat_interleave(copies, dim=0)      # (B*R, 1, 1, S)
            prefix = memory.new_full((memory.size(0), 1), config.bos_token_id,
                                     dtype=torch.long)                              # (B*R, 1)
            return run_decoding(self.decoder_for(memory, memory_bias), prefix, settings,
                                generator)
        finally:
            self.train(was_training)

    def decoder_for(self, memory: torch.Tensor, memory_bias: torch.Tensor | None) -> Decoder:
        """This model as generation sees it, for sources encoded as ``memory`` (B, S, H)."""

        def step(tokens: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            new = tokens if cache is None else tokens[:, cache.length:]             # (B, T)
            return self._decode(new, memory, memory_bias, cache)[:, -1]             # (B, V)

        config = self.config
        return Decoder(step, config.decoder_layers, config.eos_token_id, config.pad_token_id)


    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (tied matrices stored once). The
        tokenizer(s) are the caller's to save (see :func:`bertkit.data.parallel.save_tokenizers`)."""
        os.makedirs(folder, exist_ok=True)
        self.config.save_pretrained(folder)
        safetensors.torch.save_model(self, os.path.join(os.fspath(folder), WEIGHTS_NAME), metadata={"format": "pt"})
        as_user_file(os.path.join(os.fspath(folder), WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "TransformerSeq2Seq":
        """Load a folder written by :meth:`save_pretrained`; the model is returned in eval mode."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"model folder {folder} does not exist")
        weights = os.path.join(folder, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}")
        model = cls(Seq2SeqConfig.from_pretrained(folder))
        try:
            safetensors.torch.load_model(model, weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights} does not fit the model of "
                             f"{folder}/{CONFIG_NAME}: {e}") from None
        return model.eval()

    def init_encoder_from_bert(self, folder: str | os.PathLike) -> None:
        """Copy a BERT encoder (an HF or bertkit BERT folder) into this model's encoder.

        The config must have BERT's encoder shape; build it with
        :meth:`Seq2SeqConfig.from_bert`: post-LN, learned positions, unscaled embeddings with a
        LayerNorm, and the same sizes, activation and LayerNorm eps. Copied: word embeddings
        (with shared embeddings, also the decoder's and the output projection's), position
        embeddings (BERT's token-type-0 vector is added to them, which is exactly what BERT does
        for a single segment), the embedding LayerNorm and every layer. The pooler and heads are
        not used; the decoder keeps its fresh initialisation. With the same inputs the encoder
        then returns BERT's ``last_hidden_state``. A shape or setting that does not match is a
        ``ValueError`` naming it.
        """
        folder = os.fspath(folder)
        bert = BertConfig.from_pretrained(folder)
        config = self.config
        checks = [("norm", "post", "BERT is post-LN"),
                  ("position_encoding", "learned", "BERT has learned positions"),
                  ("scale_embedding", False, "BERT does not scale its embeddings"),
                  ("layernorm_embedding", True, "BERT normalises its embeddings")]
        for name, source in (("d_model", "hidden_size"), ("num_heads", "num_attention_heads"),
                             ("encoder_layers", "num_hidden_layers"),
                             ("ffn_dim", "intermediate_size"), ("activation", "hidden_act"),
                             ("layer_norm_eps", "layer_norm_eps"), ("vocab_size", "vocab_size")):
            value = getattr(bert, source)
            checks.append((name, value, f"the BERT folder has {source}={value!r}"))
        problems = [f"Seq2SeqConfig.{name}={getattr(config, name)!r} should be {value!r} ({why})"
                    for name, value, why in checks if getattr(config, name) != value]
        if config.max_position_embeddings > bert.max_position_embeddings:
            problems.append(f"Seq2SeqConfig.max_position_embeddings="
                            f"{config.max_position_embeddings} exceeds BERT's "
                            f"{bert.max_position_embeddings}")
        if problems:
            raise ValueError(f"cannot initialise the encoder from {folder}: " + "; ".join(problems)
                             + " (build the config with Seq2SeqConfig.from_bert)")
        state = _bert_state(folder)
        copies = self._bert_embedding_copies(state, "embeddings.")
        for key in self.encoder.state_dict():
            if key.startswith("layers."):
                copies[key] = state.get("encoder." + key)
        _copy_into(self.encoder, copies, folder)

    def init_decoder_from_bert(self, folder: str | os.PathLike) -> None:
        """Warm-start the decoder from the same BERT folder (BERT2BERT, Rothe et al., 2020):
        each decoder layer's self-attention, feed-forward and their LayerNorms are the BERT
        layer's, its embeddings' positions and LayerNorm are BERT's; cross-attention (which
        BERT has not) keeps its fresh initialisation. Call after :meth:`init_encoder_from_bert`
        (which checks the shapes); the decoder needs BERT's depth (``decoder_layers``)."""
        folder = os.fspath(folder)
        bert = BertConfig.from_pretrained(folder)
        if self.config.decoder_layers > bert.num_hidden_layers:
            raise ValueError(f"cannot warm-start {self.config.decoder_layers} decoder layers from "
                             f"{folder}: BERT has {bert.num_hidden_layers}")
        state = _bert_state(folder)
        copies = self._bert_embedding_copies(state, "embeddings.")
        del copies["embeddings.word_embeddings.weight"]  # shared with the encoder's
        renames = {"self_attention.query.": "attention.query.",
                   "self_attention.key.": "attention.key.",
                   "self_attention.value.": "attention.value.",
                   "self_attention_output.": "attention_output.",
                   "self_attention_norm.": "attention_norm.",
                   "ffn.": "ffn.", "ffn_norm.": "ffn_norm."}
        for key in self.decoder.state_dict():
            match = re.match(r"^layers\.(\d+)\.(.+)$", key)
            if match is None:
                continue
            for ours, bert_name in renames.items():
                if match[2].startswith(ours):
                    copies[key] = state.get(f"encoder.layers.{match[1]}."
                                            + bert_name + match[2][len(ours):])
        _copy_into(self.decoder, {k: v for k, v in copies.items()
                                  if k in self.decoder.state_dict()}, folder)

    def _bert_embedding_copies(self, state: dict[str, torch.Tensor],
                               prefix: str) -> dict[str, torch.Tensor | None]:
        """Embedding tensors for one stack from BERT's: positions carry BERT's token-type-0
        vector (exactly what BERT adds for a single segment)."""
        positions = self.config.max_position_embeddings
        return {
            prefix + "word_embeddings.weight": state.get("embeddings.word_embeddings.weight"),
            prefix + "position_embeddings.weight":
                None if "embeddings.position_embeddings.weight" not in state else
                state["embeddings.position_embeddings.weight"][:positions]
                + state.get("embeddings.token_type_embeddings.weight",
                            torch.zeros(1, self.config.d_model))[0],
            prefix + "norm.weight": state.get("embeddings.LayerNorm.weight"),
            prefix + "norm.bias": state.get("embeddings.LayerNorm.bias"),
        }


def _bert_state(folder: str) -> dict[str, torch.Tensor]:
    """A BERT folder's tensors under bertkit names, without the ``bert.`` prefix."""
    state = {}
    for key, tensor in read_state_dict(folder).items():
        key = from_hf_name(key)
        state[key[len("bert."):] if key.startswith("bert.") else key] = tensor
    return state


def _copy_into(stack: nn.Module, copies: dict[str, torch.Tensor | None], folder: str) -> None:
    """Copy ``copies`` into ``stack``'s tensors, checking presence and shapes (ValueError)."""
    missing = sorted(k for k, v in copies.items() if v is None)
    if missing:
        raise ValueError(f"{folder} lacks BERT encoder weight(s) for {', '.join(missing[:6])}")
    own = stack.state_dict()
    with torch.no_grad():
        for key, tensor in copies.items():
            if own[key].shape != tensor.shape:
                raise ValueError(f"{folder}: {key} has shape {tuple(tensor.shape)}, the "
                                 f"stack needs {tuple(own[key].shape)}")
            own[key].copy_(tensor.to(own[key].dtype))
