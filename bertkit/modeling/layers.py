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

**Unpadded (packed) batches.** A padded batch wastes every position-wise op (projections, FFN,
LayerNorm, residuals, dropout) on its padding. :func:`pack_batch` plans the other layout: the
N real tokens of the batch in one (N, H) tensor, sequences sorted by length so that sequences
of similar length sit next to each other. Attention, the one op that mixes positions, runs per
:class:`LengthGroup` (a few sequences of equal or bucketed length, viewed as a (G, L, ...) grid
and masked inside the bucket; one gather per projection puts every group's slots in place),
so a layer makes one SDPA call per group, never one per sequence.
Within a sequence the real tokens keep their order; positions come from the embeddings, which
are computed on the (B, T) grid before packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# A sequence joins the group of longer ones while its length is at least this share of the
# group's longest: the group is padded to its longest inside attention only. At BERT lengths
# attention is a small part of a layer's work, so a little padding there costs less than one
# more SDPA call (and its gathers) per group and layer.
GROUP_MIN_FILL = 0.75


@dataclass
class LengthGroup:
    """G sequences of a packed batch attended together as a (G, L) grid: L is the longest;
    ``bias`` (G, 1, 1, L) masks the slots past a shorter sequence's end (None when all G have
    L tokens). The group's slots are ``start:start + G*L`` of the batch's grid."""
    start: int
    count: int
    length: int
    bias: torch.Tensor | None = None

    def view(self, grid: torch.Tensor) -> torch.Tensor:
        """(S, F) every group's slots -> (G, L, F) this group's (a view)."""
        slots = grid[self.start:self.start + self.count * self.length]       # (G*L, F)
        return slots.view(self.count, self.length, -1)                        # (G, L, F)


@dataclass
class PackedBatch:
    """The N real tokens of a padded (B, T) batch, packed, and their attention groups.

    ``token_index`` (N,) is each packed token's flat position b*T + t in the padded batch.
    Sequences are packed longest first, each one's real tokens in order; a sequence with no
    real token is in no group. Attention sees the groups' S slots: ``grid_index`` (S,) names
    the packed token in each slot (a pad slot repeats a real token, masked as a key; its
    query's output is dropped) and ``real_slots`` (N,) the slot of each packed token; both are
    None when every group is full (the packed tokens *are* the slots).
    """
    token_index: torch.Tensor
    batch: int
    length: int
    groups: list[LengthGroup]
    grid_index: torch.Tensor | None = None
    real_slots: torch.Tensor | None = None

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (N, F), the real tokens."""
        flat = padded.reshape(self.batch * self.length, -1)                   # (B*T, F)
        return flat.index_select(0, self.token_index)                         # (N, F)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (B, T, F), with zeros at the padding positions."""
        flat = packed.new_zeros(self.batch * self.length, packed.size(-1))    # (B*T, F)
        flat = flat.index_copy(0, self.token_index, packed)                   # (B*T, F)
        return flat.view(self.batch, self.length, -1)                         # (B, T, F)

    def to_slots(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, F) packed tokens -> (S, F) the groups' slots, one gather for all groups."""
        if self.grid_index is None:
            return packed
        return packed.index_select(0, self.grid_index)                        # (S, F)

    def from_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """(S, F) -> (N, F): the real tokens' slots, in packed order."""
        if self.real_slots is None:
            return slots
        return slots.index_select(0, self.real_slots)                         # (N, F)


def pack_batch(attention_mask: torch.Tensor, dtype: torch.dtype) -> PackedBatch:
    """Plan the packed layout of a (B, T) 1/0 mask; ``dtype`` is that of the attention bias.

    Data-dependent (the number of real tokens decides shapes): not for torch.export."""
    mask = attention_mask.to(torch.bool)                                      # (B, T)
    batch, length = mask.shape
    lengths = mask.sum(dim=1)                                                 # (B,)
    order = torch.argsort(lengths, descending=True, stable=True)             # (B,)
    rows, positions = mask.index_select(0, order).nonzero(as_tuple=True)     # (N,) each
    token_index = order[rows] * length + positions                            # (N,)
    buckets = length_buckets([n for n in lengths[order].tolist() if n > 0])
    groups, start = [], 0
    for bucket in buckets:
        full = bucket[-1] == bucket[0]
        bias = None if full else padding_mask_bias(length_mask(bucket, mask.device), dtype)
        groups.append(LengthGroup(start, len(bucket), bucket[0], bias))     # bias (G, 1, 1, L)
        start += len(bucket) * bucket[0]
    if all(g.bias is None for g in groups):
        return PackedBatch(token_index, batch, length, groups)
    real = torch.cat([length_mask(b, mask.device).flatten() for b in buckets])  # (S,)
    real_slots = real.nonzero().squeeze(1)                                    # (N,)
    # A pad slot takes the packed index of the real slot before it (any real token will do).
    grid_index = (real.cumsum(0) - 1).clamp(min=0)                            # (S,)
    return PackedBatch(token_index, batch, length, groups, grid_index, real_slots)


def length_mask(lengths: list[int], device: torch.device) -> torch.Tensor:
    """(G, L) True at the first ``lengths[g]`` slots of row g; L = max(lengths)."""
    steps = torch.arange(max(lengths), device=device)                         # (L,)
    return steps[None, :] < torch.tensor(lengths, device=device)[:, None]     # (G, L)


def length_buckets(lengths: list[int]) -> list[list[int]]:
    """Lengths sorted longest first -> runs in which each length is >= GROUP_MIN_FILL times the
    run's first (longest)."""
    buckets: list[list[int]] = []
    for n in lengths:
        if buckets and n >= GROUP_MIN_FILL * buckets[-1][0]:
            buckets[-1].append(n)
        else:
            buckets.append([n])
    return buckets


# ---------------------------------------------------------------------------- sliding window
@dataclass
class WindowMask:
    """The masks of sliding-window attention with global tokens (Longformer), for a batch:
    ``padding`` and ``is_global`` (B, T) bools; ``global_index`` (B, G) the positions of each
    row's global tokens (G the most any row has), ``global_valid`` (B, G) which are real."""
    padding: torch.Tensor
    is_global: torch.Tensor
    global_index: torch.Tensor
    global_valid: torch.Tensor

    @classmethod
    def build(cls, attention_mask: torch.Tensor,
              global_attention_mask: torch.Tensor | None) -> "WindowMask":
        """From (B, T) 1/0 ``attention_mask`` and 1/0 ``global_attention_mask`` (None: none)."""
        padding = ~attention_mask.to(torch.bool)                               # (B, T)
        is_global = torch.zeros_like(padding) if global_attention_mask is None \
            else global_attention_mask.to(torch.bool) & ~padding               # (B, T)
        counts = is_global.sum(dim=1)                                          # (B,)
        most = int(counts.max()) if counts.numel() else 0
        # Stable sort puts each row's global positions first, in order.
        order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)  # (B, T)
        global_index = order[:, :most]                                         # (B, G)
        global_valid = torch.arange(most, device=padding.device)[None, :] < counts[:, None]
        return cls(padding, is_global, global_index, global_valid)


def sliding_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             window: int, mask: WindowMask,
                             dropout_p: float = 0.0) -> torch.Tensor:
    """Each query attends to the keys at most ``window`` positions away (padding and global
    keys excluded) and to every global key; time and memory are O(T * window).

    Queries are taken in blocks of ``window``; block b sees the 3 * ``window`` keys from
    (b - 1) * window, of which a band keeps exactly those within ``window``. The scores of
    local and global keys share one softmax, as in Longformer.

    Args: query (already scaled by 1/√D), key, value (B, N, T, D). Returns (B, N, T, D).
    """
    batch, heads, length, dim = query.shape
    blocks = -(-length // window)
    pad = blocks * window - length
    lowest = torch.finfo(query.dtype).min
    excluded = F.pad(mask.padding | mask.is_global, (window, window + pad), value=True)
    excluded = excluded.unfold(1, 3 * window, window)[:, None, :, None, :]   # (B, 1, nb, 1, 3w)
    rows = torch.arange(window, device=query.device)[:, None]
    cols = torch.arange(3 * window, device=query.device)[None, :]
    outside = (cols < rows) | (cols > rows + 2 * window)                      # (w, 3w)
    q = F.pad(query, (0, 0, 0, pad)).view(batch, heads, blocks, window, dim)  # (B, N, nb, w, D)
    k = F.pad(key, (0, 0, window, window + pad)).unfold(2, 3 * window, window)  # (B,N,nb,D,3w)
    v = F.pad(value, (0, 0, window, window + pad)).unfold(2, 3 * window, window)
    scores = (q @ k).masked_fill_(outside | excluded, lowest)                 # (B, N, nb, w, 3w)
    scores = scores.view(batch, heads, blocks * window, 3 * window)[:, :, :length]  # (B,N,T,3w)
    has_global = mask.global_index.size(1) > 0
    if has_global:
        index = mask.global_index[:, None, :, None].expand(-1, heads, -1, dim)  # (B, N, G, D)
        global_keys = key.gather(2, index)                                    # (B, N, G, D)
        global_values = value.gather(2, index)                                # (B, N, G, D)
        global_scores = (query @ global_keys.transpose(-2, -1)).masked_fill(
            ~mask.global_valid[:, None, None, :], lowest)                     # (B, N, T, G)
        scores = torch.cat([global_scores, scores], dim=-1)                   # (B, N, T, G+3w)
    probs = F.dropout(scores.float().softmax(dim=-1).to(query.dtype), p=dropout_p)
    local = probs[..., -3 * window:]                                          # (B, N, T, 3w)
    if pad:
        local = F.pad(local, (0, 0, 0, pad))                                  # (B, N, nb*w, 3w)
    local = local.reshape(batch, heads, blocks, window, 3 * window)  # a copy only with globals
    context = (local @ v.transpose(-2, -1)).view(batch, heads, blocks * window, dim)
    context = context[:, :, :length]                                          # (B, N, T, D)
    if has_global:
        context = context + probs[..., :-3 * window] @ global_values          # (B, N, T, D)
    return context


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
                 head_dim: int | None = None, window: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.dropout = dropout
        inner = num_heads * self.head_dim                                     # N*D
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(hidden_size, inner)
        self.value = nn.Linear(hidden_size, inner)
        self.prefix: nn.Module | None = None
        # Sliding-window mode (Longformer): ``window`` keys on each side, and global tokens'
        # own projections (a global token attends to every token).
        self.window = window
        if window is not None:
            self.query_global = nn.Linear(hidden_size, inner)
            self.key_global = nn.Linear(hidden_size, inner)
            self.value_global = nn.Linear(hidden_size, inner)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                need_weights: bool = False,
                packed: PackedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H), bias (B, 1, 1, T) or None -> context (B, T, N*D), probs (B, N, T, S).

        With ``packed``: hidden (N, H) real tokens -> context (N, N*D), no probabilities
        (``bias`` and ``need_weights`` are not used)."""
        if packed is not None:
            return self._packed_forward(hidden, packed), None
        if isinstance(bias, WindowMask):
            return self._windowed_forward(hidden, bias), None
        q = split_heads(self.query(hidden), self.num_heads)                  # (B, N, T, D)
        k = split_heads(self.key(hidden), self.num_heads)                    # (B, N, T, D)
        v = split_heads(self.value(hidden), self.num_heads)                  # (B, N, T, D)
        if self.prefix is not None:
            k, v, bias = self.prefix(k, v, bias)                              # S = P + T
        dropout_p = self.dropout if self.training else 0.0
        context, probs = attention(q, k, v, bias, dropout_p, need_weights)
        return merge_heads(context), probs                                    # (B, T, N*D)

    def _windowed_forward(self, hidden: torch.Tensor, mask: WindowMask) -> torch.Tensor:
        """hidden (B, T, H) -> context (B, T, N*D): sliding-window attention for every token,
        then full attention with the global projections for the global tokens."""
        if self.window is None:
            raise ValueError("a sliding-window mask needs a layer built with a window")
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout_p = self.dropout if self.training else 0.0
        q = split_heads(self.query(hidden), self.num_heads) * scale          # (B, N, T, D)
        k = split_heads(self.key(hidden), self.num_heads)                    # (B, N, T, D)
        v = split_heads(self.value(hidden), self.num_heads)                  # (B, N, T, D)
        context = sliding_window_attention(q, k, v, self.window, mask, dropout_p)
        context = context.transpose(1, 2)                                     # (B, T, N, D)
        if mask.global_index.size(1) > 0:
            rows, slots = mask.global_valid.nonzero(as_tuple=True)            # (K,) each
            positions = mask.global_index[rows, slots]                        # (K,)
            chosen = hidden.gather(1, mask.global_index[..., None].expand(-1, -1, hidden.size(-1)))
            gq = split_heads(self.query_global(chosen), self.num_heads) * scale  # (B, N, G, D)
            gk = split_heads(self.key_global(hidden), self.num_heads)         # (B, N, T, D)
            gv = split_heads(self.value_global(hidden), self.num_heads)       # (B, N, T, D)
            scores = (gq @ gk.transpose(-2, -1)).masked_fill(
                mask.padding[:, None, None, :], torch.finfo(gq.dtype).min)   # (B, N, G, T)
            probs = F.dropout(scores.float().softmax(dim=-1).to(gq.dtype), p=dropout_p)
            global_context = (probs @ gv).transpose(1, 2)                    # (B, G, N, D)
            context = context.clone()
            context[rows, positions] = global_context[rows, slots]
        return context.flatten(2)                                            # (B, T, N*D)

    def _packed_forward(self, hidden: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
        """hidden (N, H) -> context (N, N*D): one attention call per length group."""
        q = packed.to_slots(self.query(hidden))                               # (S, N*D)
        k = packed.to_slots(self.key(hidden))                                 # (S, N*D)
        v = packed.to_slots(self.value(hidden))                               # (S, N*D)
        dropout_p = self.dropout if self.training else 0.0
        contexts = []
        for group in packed.groups:
            gq = split_heads(group.view(q), self.num_heads)                   # (G, N, L, D)
            gk = split_heads(group.view(k), self.num_heads)                   # (G, N, L, D)
            gv = split_heads(group.view(v), self.num_heads)                   # (G, N, L, D)
            bias = group.bias                                                 # (G, 1, 1, L) or None
            if self.prefix is not None:
                gk, gv, bias = self.prefix(gk, gv, bias)                      # S = P + L
            context, _ = attention(gq, gk, gv, bias, dropout_p)               # (G, N, L, D)
            contexts.append(merge_heads(context).flatten(0, 1))              # (G*L, N*D)
        context = contexts[0] if len(contexts) == 1 else torch.cat(contexts)  # (S, N*D)
        return packed.from_slots(context)                                     # (N, N*D)


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

    def __init__(self, config: BertConfig, num_heads: int | None = None,
                 window: int | None = None):
        super().__init__()
        hidden = config.hidden_size
        heads = config.num_attention_heads if num_heads is None else num_heads
        self.attention = SelfAttention(hidden, heads, config.attention_probs_dropout_prob,
                                       head_dim=config.head_dim, window=window)
        self.attention_output = nn.Linear(heads * config.head_dim, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn = FeedForward(hidden, config.intermediate_size, config.hidden_act)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapters = nn.ModuleDict()

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                need_weights: bool = False,
                packed: PackedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H) -> (B, T, H) and the attention probabilities if asked; with
        ``packed``, hidden (N, H) real tokens -> (N, H) (every op but attention is
        position-wise, so only attention needs to know the layout)."""
        context, probs = self.attention(hidden, bias, need_weights, packed)  # (B, T, N*D)
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
    """Word + learned absolute position + token type embeddings, LayerNorm, dropout.

    The BERT family's variants are config values: RoBERTa counts positions from
    ``position_offset`` (pad_token_id + 1) over the non-padding tokens and has one token type
    (any token type id given is read as 0); DistilBERT has no token type table; ALBERT's
    embeddings are ``embedding_dim`` (E) wide, projected to H by the encoder."""

    def __init__(self, config: BertConfig):
        super().__init__()
        width = config.embedding_dim                                           # E (= H but ALBERT)
        self.max_positions = config.max_tokens
        self.position_offset = config.position_offset
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, width,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, width,
            padding_idx=config.pad_token_id if self.position_offset else None)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width) \
            if config.uses_token_types else None
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                packed: PackedBatch | None = None) -> torch.Tensor:
        """input_ids, token_type_ids (B, T) -> (B, T, E); with ``packed``, (N, E): the sum of
        the three embeddings is taken on the (B, T) grid (positions are grid columns), then
        only the real tokens go through LayerNorm and dropout."""
        length = input_ids.size(1)
        if length > self.max_positions:
            raise ValueError(f"input has {length} tokens but the model takes at most "
                             f"{self.max_positions} (max_position_embeddings); truncate it, e.g. "
                             f"tokenizer(..., truncation=True, max_length={self.max_positions})")
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(
            self.position_ids(input_ids))                                      # (B, T, E)
        types = self.token_type_embeddings
        if types is not None:
            if token_type_ids is None or types.num_embeddings == 1:
                embedded = embedded + types.weight[0]
            else:
                embedded = embedded + types(token_type_ids)
        if packed is not None:
            embedded = packed.pack(embedded)                                  # (N, E)
        return self.dropout(self.LayerNorm(embedded))                         # (B, T, E) or (N, E)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> positions: (T,) 0..T-1 (BERT), or (B, T) for RoBERTa: the real tokens
        numbered from ``position_offset`` in order, padding ids at ``padding_idx`` (the rule
        of transformers' create_position_ids_from_input_ids)."""
        if not self.position_offset:
            return torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        real = (input_ids != self.padding_idx).long()                         # (B, T)
        return real.cumsum(dim=1) * real + self.padding_idx                   # (B, T)
