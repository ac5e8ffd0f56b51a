"""The Transformer's building blocks: attention, feed-forward, embeddings, the encoder layer.

Attention is written once, in :func:`attention`; the BERT encoder here and the seq2seq decoder
call it. Shapes use this legend:

    B  batch size            T  query length         S  key/value length
    H  hidden size           N  number of heads      D  head size (H / N)
    I  intermediate (FFN) size

**Mask convention.** Every attention mask is an *additive bias* of shape broadcastable to
(B, N, T, S): 0 where a query may attend, ``torch.finfo(dtype).min`` where it may not. Adding
the most negative finite number (not -inf) keeps a fully-masked row finite: its softmax is
uniform instead of NaN, and the row's output is ignored downstream anyway. Build masks with
:func:`padding_mask_bias` / :func:`causal_mask_bias`, never with a hard-coded -10000.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.config import BertConfig


def init_transformer_weights(model: nn.Module, linear_init, embedding_std: float) -> None:
    """Initialise every Linear weight with ``linear_init`` (zero biases), every Embedding from
    N(0, embedding_std) with a zero padding row, every LayerNorm to the identity."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            linear_init(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=embedding_std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def padding_mask_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 mask of real/padding keys -> (B, 1, 1, S) additive bias in ``dtype``."""
    keep = attention_mask[:, None, None, :].to(torch.bool)                   # (B, 1, 1, S)
    return torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min)


def causal_mask_bias(length: int, dtype: torch.dtype, device: torch.device | None = None,
                     past_length: int = 0) -> torch.Tensor:
    """(T, past+T) bias letting query i see keys 0..past+i only (decoder self-attention)."""
    query_pos = torch.arange(length, device=device)[:, None] + past_length    # (T, 1)
    key_pos = torch.arange(past_length + length, device=device)[None, :]      # (1, S)
    return torch.zeros(length, past_length + length, dtype=dtype, device=device).masked_fill(
        key_pos > query_pos, torch.finfo(dtype).min)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              bias: torch.Tensor | None = None, dropout_p: float = 0.0,
              need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention, softmax(Q Kᵀ / √D + bias) V.

    Args:
        query: (B, N, T, D); key, value: (B, N, S, D).
        bias: additive mask broadcastable to (B, N, T, S) (see the module docstring), or None.
        dropout_p: dropout on the attention probabilities (pass 0.0 in eval mode).
        need_weights: also return the probabilities. The fused kernel
            (``F.scaled_dot_product_attention``) never materialises them, so this selects the
            explicit path; a test proves both paths equal.

    Returns:
        (B, N, T, D) context, and (B, N, T, S) probabilities or None.
    """
    if not need_weights:
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias,
                                                 dropout_p=dropout_p)
        return context, None
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))       # (B, N, T, S)
    if bias is not None:
        # In fp16 a score below about -16 plus finfo.min rounds to -inf, and a fully-masked
        # row of -inf has a NaN softmax; clamping restores the finite minimum (uniform row).
        scores = (scores + bias).clamp(min=torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)                                            # (B, N, T, S)
    context = F.dropout(probs, p=dropout_p) @ value if dropout_p > 0 else probs @ value
    return context, probs                                                     # (B, N, T, D)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, H) -> (B, N, T, D)."""
    batch, length, hidden = x.shape
    return x.view(batch, length, num_heads, hidden // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, N, T, D) -> (B, T, H)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


ACTIVATIONS = {
    "gelu": F.gelu,  # the exact erf form of the original BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """The rows of a (N*D, H) query/key/value weight that belong to ``heads`` (head h owns
    rows h*D .. h*D+D-1), in order: (len(heads) * D,) int64."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)],
                        dtype=torch.long)


def _select(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding the output rows (``dim=0``) or input columns (``dim=1``) of
    ``linear`` at ``index``; the bias follows the rows (all of it is kept for columns)."""
    weight = linear.weight.index_select(dim, index.to(linear.weight.device))
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index.to(linear.bias.device)] if dim == 0 else linear.bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


class SelfAttention(nn.Module):
    """Multi-head self-attention (the HF names: ``query``, ``key``, ``value``).

    ``num_heads`` heads of ``head_dim`` (default H / N) each: the projections map H -> N*D,
    which is H itself unless heads were pruned (config ``pruned_heads``; then N is the number
    of heads the layer kept and D is still the model's head size).

    Prefix tuning adds trainable keys/values through ``prefix`` (PEFT methods hook in here so
    that attention stays in one place).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float,
                 head_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.dropout = dropout
        inner = num_heads * self.head_dim                                     # N*D
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(hidden_size, inner)
        self.value = nn.Linear(hidden_size, inner)
        self.prefix: nn.Module | None = None

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H), bias (B, 1, 1, T) or None -> context (B, T, N*D), probs (B, N, T, S)."""
        q = split_heads(self.query(hidden), self.num_heads)                  # (B, N, T, D)
        k = split_heads(self.key(hidden), self.num_heads)                    # (B, N, T, D)
        v = split_heads(self.value(hidden), self.num_heads)                  # (B, N, T, D)
        if self.prefix is not None:
            k, v, bias = self.prefix(k, v, bias)                              # S = P + T
        dropout_p = self.dropout if self.training else 0.0
        context, probs = attention(q, k, v, bias, dropout_p, need_weights)
        return merge_heads(context), probs                                    # (B, T, N*D)


class FeedForward(nn.Module):
    """Position-wise feed-forward: dense (H -> I), activation, dense (I -> H)."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str):
        super().__init__()
        self.up = nn.Linear(hidden_size, intermediate_size)
        self.down = nn.Linear(intermediate_size, hidden_size)
        self.activation = ACTIVATIONS[activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(hidden)))                   # (B, T, H)


class EncoderLayer(nn.Module):
    """One post-LN Transformer encoder layer, as in BERT and Vaswani et al.:

        x = LayerNorm(x + Dropout(Dense(SelfAttention(x))))
        x = LayerNorm(x + Dropout(FeedForward(x)))

    ``adapters`` is where bottleneck adapters (PEFT) plug in: each is applied to a sub-layer's
    output before the residual sum; empty by default.

    ``num_heads`` (default: the config's) is the layer's own head count after head pruning;
    the attention output projection then reads N*D < H features.
    """

    def __init__(self, config: BertConfig, num_heads: int | None = None):
        super().__init__()
        hidden = config.hidden_size
        heads = config.num_attention_heads if num_heads is None else num_heads
        self.attention = SelfAttention(hidden, heads, config.attention_probs_dropout_prob,
                                       head_dim=config.head_dim)
        self.attention_output = nn.Linear(heads * config.head_dim, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn = FeedForward(hidden, config.intermediate_size, config.hidden_act)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapters = nn.ModuleDict()

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.attention(hidden, bias, need_weights)          # (B, T, N*D)
        attended = self.dropout(self.attention_output(context))               # (B, T, H)
        if "attention" in self.adapters:
            attended = self.adapters["attention"](attended)
        hidden = self.attention_norm(hidden + attended)                       # (B, T, H)
        transformed = self.dropout(self.ffn(hidden))
        if "ffn" in self.adapters:
            transformed = self.adapters["ffn"](transformed)
        hidden = self.ffn_norm(hidden + transformed)                          # (B, T, H)
        return hidden, probs

    @torch.no_grad()
    def keep_heads(self, positions: list[int]) -> None:
        """Remove every attention head but ``positions`` (indices among the layer's current
        heads): the query/key/value rows and the output projection's input columns of the
        other heads go. The rest of the layer computes exactly what it did with the removed
        heads' value rows zeroed."""
        attention = self.attention
        if not positions or len(set(positions)) != len(positions) or not all(
                0 <= p < attention.num_heads for p in positions):
            raise ValueError(f"keep_heads needs distinct head positions in [0, "
                             f"{attention.num_heads}), at least one; got {positions}")
        for owner, name in ((attention, "query"), (attention, "key"), (attention, "value"),
                            (self, "attention_output")):
            if type(getattr(owner, name)) is not nn.Linear:
                raise ValueError(f"cannot prune heads of a layer whose {name} is wrapped "
                                 "(PEFT): prune the plain model first")
        rows = head_rows(sorted(positions), attention.head_dim)               # (N'*D,)
        attention.query = _select(attention.query, rows, dim=0)
        attention.key = _select(attention.key, rows, dim=0)
        attention.value = _select(attention.value, rows, dim=0)
        self.attention_output = _select(self.attention_output, rows, dim=1)
        attention.num_heads = len(positions)


class BertEmbeddings(nn.Module):
    """Word + learned absolute position + token type embeddings, LayerNorm, dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """input_ids, token_type_ids (B, T) -> (B, T, H)."""
        length = input_ids.size(1)
        if length > self.max_positions:
            raise ValueError(f"input has {length} tokens but the model takes at most "
                             f"{self.max_positions} (max_position_embeddings); truncate it, e.g. "
                             f"tokenizer(..., truncation=True, max_length={self.max_positions})")
        positions = torch.arange(length, device=input_ids.device)            # (T,)
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            embedded = embedded + self.token_type_embeddings.weight[0]
        else:
            embedded = embedded + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embedded))                         # (B, T, H)
