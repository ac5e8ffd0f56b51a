"""A GPT-2 style decoder-only language model (Radford et al., 2019) on the shared blocks.

What makes it GPT-2 rather than BERT, each a small difference on :mod:`bertkit.modeling.layers`:

- causal self-attention: the one attention module (:class:`~bertkit.modeling.layers.SelfAttention`
  and :func:`~bertkit.modeling.layers.attention`) with a causal mask and a key/value cache;
- pre-LN blocks, ``x + Dropout(Attn(LN(x)))`` then ``x + Dropout(FFN(LN(x)))``, and a final
  LayerNorm;
- learned positions, no token types; the output projection is the token embedding (tied);
- the ``gelu_new`` (tanh) activation and LayerNorm eps 1e-5.

Folders are HF ``gpt2`` folders: ``config.json`` (``"model_type": "gpt2"``) and
``model.safetensors`` under transformers' names, so a folder moves between bertkit and
``GPT2LMHeadModel`` both ways (:mod:`bertkit.checkpoint` maps the names and transposes
transformers' Conv1D weights). Generation is :mod:`bertkit.modeling.generation`.

Shapes: B batch, T new positions, P cached positions, S = P + T keys, H hidden (n_embd),
N heads, D head size, V vocabulary.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bertkit.checkpoint import (WEIGHTS_NAME, gpt2_from_hf_state, gpt2_to_hf_state,
                                read_state_dict)
from bertkit.config import GPT2Config
from bertkit.modeling.bert import IGNORE_INDEX
from bertkit.modeling.generation import (Decoder, GenerationOutput, GenerationSettings,
                                         KVCache, LayerCache, StopStrings, rows_per_input,
                                         run_decoding, stream_tokens)
from bertkit.modeling.layers import (FeedForward, SelfAttention, attention, causal_mask_bias,
                                     init_transformer_weights, merge_heads, split_heads)
from bertkit.outputs import as_user_file


@dataclass
class CausalLMOutput:
    loss: torch.Tensor | None    # scalar: mean next-token cross-entropy over labelled positions
    logits: torch.Tensor         # (B, T, V)


class CausalSelfAttention(SelfAttention):
    """The shared :class:`SelfAttention` (its query/key/value projections and prefix hook)
    with a causal mask and a key/value cache."""

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """hidden (B, T, H) at positions P..P+T-1, bias broadcastable to (B, N, T, S) or None ->
        context (B, T, H). With ``cache`` the new keys/values are appended to it."""
        q = split_heads(self.query(hidden), self.num_heads)                  # (B, N, T, D)
        k = split_heads(self.key(hidden), self.num_heads)                    # (B, N, T, D)
        v = split_heads(self.value(hidden), self.num_heads)                  # (B, N, T, D)
        if cache is not None:
            k, v = cache.append(k, v)                                         # (B, N, S, D)
        if self.prefix is not None:
            k, v, bias = self.prefix(k, v, bias)
        dropout_p = self.dropout if self.training else 0.0
        context, _ = attention(q, k, v, bias, dropout_p)                      # (B, N, T, D)
        return merge_heads(context)                                           # (B, T, H)


class GPT2Block(nn.Module):
    """One pre-LN decoder block (GPT-2): attention and feed-forward, each on a LayerNorm of
    the residual stream and added back to it."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        h = config.n_embd
        self.attention_norm = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.attention = CausalSelfAttention(h, config.n_head, config.attn_pdrop)
        self.attention_output = nn.Linear(h, h)
        self.ffn_norm = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.ffn = FeedForward(h, config.inner_size, config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """hidden (B, T, H) -> (B, T, H)."""
        context = self.attention(self.attention_norm(hidden), bias, cache)   # (B, T, H)
        hidden = hidden + self.dropout(self.attention_output(context))       # (B, T, H)
        return hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))        # (B, T, H)


class GPT2Embeddings(nn.Module):
    """Token + learned position embeddings, dropout (no LayerNorm: the blocks are pre-LN)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.max_positions = config.n_positions
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embeddings = nn.Embedding(config.n_positions, config.n_embd)
        self.dropout = nn.Dropout(config.embd_pdrop)

    def forward(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """input_ids (B, T) at positions past_length ... past_length+T-1 -> (B, T, H)."""
        end = past_length + input_ids.size(1)
        if end > self.max_positions:
            raise ValueError(f"the sequence needs {end} positions but the model's context is "
                             f"{self.max_positions} tokens (n_positions); shorten the prompt or "
                             "generate fewer tokens")
        positions = torch.arange(past_length, end, device=input_ids.device)           # (T,)
        return self.dropout(self.word_embeddings(input_ids)
                            + self.position_embeddings(positions))                    # (B, T, H)


class GPT2LMHeadModel(nn.Module):
    """The decoder-only language model: ``forward(input_ids (B, T), attention_mask=None,
    labels=None)`` -> :class:`CausalLMOutput` with ``logits`` (B, T, V) and, with labels, the
    next-token loss (``labels`` are the input ids, -100 where no loss; shifted inside, as in
    transformers). Batches are right-padded: the causal mask alone keeps real positions off the
    padding after them; ``attention_mask`` is also honoured (left padding)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.embeddings = GPT2Embeddings(config)
        self.layers = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, initializer_range) matrices and embeddings, zero
        biases, unit LayerNorms, and the projections into the residual stream scaled by
        1 / sqrt(2 * n_layer) (each block adds two of them)."""
        std = self.config.initializer_range
        init_transformer_weights(self, lambda w: nn.init.normal_(w, std=std), std)
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.layers:
            nn.init.normal_(block.attention_output.weight, std=residual_std)
            nn.init.normal_(block.ffn.down.weight, std=residual_std)

    @property
    def device(self) -> torch.device:
        return self.embeddings.word_embeddings.weight.device

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ forward
    def _bias(self, length: int, past: int, attention_mask: torch.Tensor | None,
              dtype: torch.dtype) -> torch.Tensor | None:
        """The additive mask: causal (T, S), with padding keys (B, 1, T, S) when the mask has
        zeros; None for one new position and no padding (SDPA's fastest path)."""
        device = self.device
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded:
            return None if length == 1 else causal_mask_bias(length, dtype, device, past)
        query = torch.arange(length, device=device)[:, None] + past                  # (T, 1)
        key = torch.arange(past + length, device=device)[None, :]                    # (1, S)
        keep = (key <= query)[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
        return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(
            ~keep, torch.finfo(dtype).min)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) at positions P..P+T-1 (P = the cache's length) -> (B, T, H);
        ``attention_mask`` (B, P+T) covers the cached positions too."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got "
                             f"{tuple(input_ids.shape)}")
        past = cache.length if cache is not None else 0
        hidden = self.embeddings(input_ids, past)                                    # (B, T, H)
        bias = self._bias(input_ids.size(1), past, attention_mask, hidden.dtype)
        for index, block in enumerate(self.layers):
            hidden = block(hidden, bias, cache.layers[index] if cache is not None else None)
        return self.final_norm(hidden)                                               # (B, T, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H) -> (B, T, V) through the tied token embedding."""
        return F.linear(hidden, self.embeddings.word_embeddings.weight)              # (B, T, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                cache: KVCache | None = None) -> CausalLMOutput:
        logits = self.logits(self.hidden_states(input_ids, attention_mask, cache))  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return CausalLMOutput(loss, logits)

    # ------------------------------------------------------------------ generation
    def decoder(self) -> Decoder:
        """This model as :mod:`~bertkit.modeling.generation` sees it."""

        @torch.no_grad()
        def step(tokens: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            new = tokens if cache is None else tokens[:, cache.length:]              # (B, T)
            return self.logits(self.hidden_states(new, None, cache)[:, -1])          # (B, V)

        config = self.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        return Decoder(step, config.n_layer, config.eos_token_id, pad)

    def check_prompt(self, input_ids: torch.Tensor, settings: GenerationSettings) -> None:
        """A one-line ValueError when the prompt or ``max_new_tokens`` do not fit the context."""
        if input_ids.dim() != 2 or input_ids.size(1) < 1:
            raise ValueError(f"input_ids must have shape (batch, length >= 1), got "
                             f"{tuple(input_ids.shape)}")
        context, length = self.config.n_positions, input_ids.size(1)
        if length >= context:
            raise ValueError(f"the prompt has {length} tokens but the model's context is "
                             f"{context} (n_positions): no room to generate; shorten the prompt")
        settings.check(context - length, "max_new_tokens",
                       f"the context of {context} tokens minus the prompt's {length}")

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, settings: GenerationSettings | None = None,
                 generator: torch.Generator | None = None, stop: StopStrings | None = None,
                 **options) -> GenerationOutput:
        """Continue each prompt of ``input_ids`` (B, T) (equal lengths, no padding) as
        ``settings`` (or keyword ``options`` of :class:`GenerationSettings`) say: greedy by
        default. Returns the generated ids only (eos then pad once a row ends)."""
        settings = settings or GenerationSettings(**options)
        self.check_prompt(input_ids, settings)
        was_training = self.training
        self.eval()  # dropout off: generation is inference
        try:
            prefix = input_ids.repeat_interleave(rows_per_input(settings), dim=0)   # (B*R, T)
            return run_decoding(self.decoder(), prefix, settings, generator, stop)
        finally:
            self.train(was_training)

    def stream(self, input_ids: torch.Tensor, settings: GenerationSettings | None = None,
               generator: torch.Generator | None = None, stop: StopStrings | None = None,
               **options) -> Iterator[int]:
        """The ids generated after one prompt (1, T), each yielded as soon as it is chosen."""
        settings = settings or GenerationSettings(**options)
        self.check_prompt(input_ids, settings)
        was_training = self.training
        self.eval()  # dropout off: generation is inference
        try:  # (no `with torch.no_grad()` around a yield: it would leak to the caller)
            yield from stream_tokens(self.decoder(), input_ids, settings, generator, stop)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write an HF ``gpt2`` folder: ``config.json`` and ``model.safetensors`` under
        transformers' names (the tied output matrix is the token embedding, stored once)."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.config.architectures = ["GPT2LMHeadModel"]
        self.config.save_pretrained(folder)
        state = gpt2_to_hf_state(self.state_dict())
        save_file(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
        as_user_file(os.path.join(folder, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "GPT2LMHeadModel":
        """Load an HF ``gpt2`` folder (written by transformers or bertkit); eval mode. A key
        or shape that does not fit is a ValueError naming it."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"model folder {folder} does not exist")
        model = cls(GPT2Config.from_pretrained(folder))
        state = gpt2_from_hf_state(read_state_dict(folder), model.config.n_layer, where=folder)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unknown = sorted(set(state) - set(own))
        if missing or unknown:
            raise ValueError(f"{folder}: the weights do not fit the model: missing "
                             f"{missing[:6]}, unknown {unknown[:6]}")
        for key, tensor in state.items():
            if own[key].shape != tensor.shape:
                raise ValueError(f"{folder}: {key} has shape {tuple(tensor.shape)}, the model of "
                                 f"its config.json needs {tuple(own[key].shape)}")
        model.load_state_dict(state)
        return model.eval()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 at position t: logits (B, T, V), labels
    (B, T) (-100 = no loss) -> scalar; zero (graph kept) when nothing is labelled."""
    targets = labels[:, 1:]                                                          # (B, T-1)
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                           targets.reshape(-1), ignore_index=IGNORE_INDEX)


def prompt_tensor(ids: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """One prompt's ids as the (1, T) tensor :meth:`GPT2LMHeadModel.generate` takes."""
    return torch.tensor([list(ids)], dtype=torch.long, device=device)
