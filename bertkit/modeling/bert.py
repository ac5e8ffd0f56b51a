"""BERT (Devlin et al., 2019): the encoder and its heads.

Shapes: B batch, T sequence length, H hidden size, N heads, V vocabulary, C classes,
M masked positions in a batch, L layers.

Every class loads and saves Hugging Face folders through :class:`BertPreTrainedModel`
(``from_pretrained`` / ``save_pretrained``); parameter names are mapped in
:mod:`bertkit.checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.checkpoint import load_model, save_model
from bertkit.config import BertConfig, read_config_file
from bertkit.modeling.layers import (ACTIVATIONS, BertEmbeddings, EncoderLayer, PackedBatch,
                                     WindowMask, init_transformer_weights, pack_batch,
                                     padding_mask_bias)

# The label value every loss in bertkit skips (padding, special tokens, non-first sub-tokens,
# unmasked positions): torch's cross_entropy default, and what transformers' collators write.
IGNORE_INDEX = -100


def _exporting() -> bool:
    """True while torch.export (the dynamo ONNX exporter) or the TorchScript tracer runs."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


# ---------------------------------------------------------------------------- outputs
@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor                      # (B, T, H)
    pooler_output: torch.Tensor | None = None            # (B, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 of (B, T, H): embeddings, layers
    attentions: tuple[torch.Tensor, ...] | None = None   # L of (B, N, T, T)


@dataclass
class PreTrainingOutput:
    loss: torch.Tensor | None
    prediction_logits: torch.Tensor  # (B, T, V); with labels, only masked positions: (M, V)
    seq_relationship_logits: torch.Tensor                # (B, 2)
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, T, V); with labels, only masked positions: (M, V)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # sequence: (B, C); token: (B, T, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    loss: torch.Tensor | None
    start_logits: torch.Tensor                           # (B, T)
    end_logits: torch.Tensor                             # (B, T)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ---------------------------------------------------------------------------- base class
class BertPreTrainedModel(nn.Module):
    """Weight initialisation and HF-folder loading/saving shared by every BERT class."""

    config: BertConfig
    config_class: type[BertConfig] = BertConfig  # the family's config (RobertaConfig ...)

    def init_weights(self) -> None:
        """BERT's initialisation: N(0, initializer_range) for matrices, zero biases, unit
        LayerNorm, a zero row for the padding embedding."""
        std = self.config.initializer_range
        init_transformer_weights(self, lambda w: nn.init.normal_(w, std=std), std)
        for module in self.modules():
            if isinstance(module, MaskedLMHead):
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, strict: bool = True,
                        verbose: bool = True, **config_overrides: Any):
        """Load an HF-format folder (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``). ``config_overrides`` set config fields first (e.g.
        ``num_labels=3``, ``id2label={...}``, ``hidden_dropout_prob=0.0``). Head weights the
        folder lacks are initialised fresh and reported; see :func:`bertkit.checkpoint.load_model`.

        The folder's ``model_type`` chooses the family: ``BertForSequenceClassification`` on a
        RoBERTa folder builds ``RobertaForSequenceClassification`` (see :func:`family_class`)."""
        return load_model(family_class(cls, folder), folder, strict=strict, verbose=verbose,
                          **config_overrides)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` with HF parameter names."""
        save_model(self, folder)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def resize_token_embeddings(self, new_size: int) -> nn.Embedding:
        """Grow the word embedding table to ``new_size`` rows (V -> V', for tokens added to
        the tokenizer, see :meth:`bertkit.Tokenizer.add_tokens`): the V old rows are kept, the
        new ones drawn as BERT initialises them (N(0, initializer_range)); an MLM head's
        per-word bias grows with zeros. ``config.vocab_size`` follows, so the saved folder
        loads in transformers. A smaller ``new_size`` is a ValueError. Returns the table."""
        table = next(m for m in self.modules() if isinstance(m, BertEmbeddings)).word_embeddings
        old_size = table.num_embeddings
        if new_size < old_size:
            raise ValueError(f"cannot shrink the embedding table from {old_size} to {new_size} rows")
        if new_size > old_size:
            added = table.weight.new_empty(new_size - old_size, table.embedding_dim)  # (V'-V, E)
            nn.init.normal_(added, std=self.config.initializer_range)
            table.weight = nn.Parameter(torch.cat([table.weight.detach(), added]))  # (V', E)
            table.num_embeddings = new_size
            for head in (m for m in self.modules() if isinstance(m, MaskedLMHead)):
                head.bias = nn.Parameter(torch.cat(
                    [head.bias.detach(), head.bias.new_zeros(new_size - old_size)]))  # (V',)
        self.config.vocab_size = new_size
        return table


# ---------------------------------------------------------------------------- the encoder
class BertEncoder(nn.Module):
    """The encoder layers, run in ``config.layer_order()`` (ALBERT runs shared layers several
    times; ``layers`` holds each distinct layer once), after ``embedding_projection`` (E -> H)
    when the config factorises the embeddings (ALBERT)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        order = config.layer_order()
        # A head-pruned config gives each layer its own head count.
        self.layers = nn.ModuleList(EncoderLayer(config, len(config.kept_heads(i)),
                                                 config.local_window(i))
                                    for i in range(max(order) + 1))
        self.order = None if order == list(range(len(self.layers))) else order
        self.embedding_projection = nn.Linear(config.embedding_dim, config.hidden_size) \
            if config.projects_embeddings else None

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, output_attentions: bool,
                output_hidden_states: bool, packed: PackedBatch | None = None,
                ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """hidden (B, T, H), or (N, H) real tokens with ``packed`` -> the last layer's output,
        every layer's (if asked, embeddings first), every layer's attention probabilities (if
        asked; never with ``packed``)."""
        if self.embedding_projection is not None:
            hidden = self.embedding_projection(hidden)                        # (B, T, H) or (N, H)
        all_hidden = [hidden] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        layers = self.layers if self.order is None else [self.layers[i] for i in self.order]
        for layer in layers:
            hidden, probs = layer(hidden, bias, output_attentions, packed)  # (B, T, H) or (N, H)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                all_attentions.append(probs)
        return (hidden, tuple(all_hidden) if all_hidden is not None else None,
                tuple(all_attentions) if all_attentions is not None else None)


class BertPooler(nn.Module):
    """tanh(Dense(hidden state of [CLS])): the sentence vector NSP was trained on."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))                          # (B, H)


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, L post-LN Transformer layers, an optional tanh pooler.

    ``forward(input_ids (B, T), attention_mask (B, T) 1=real 0=pad, token_type_ids (B, T))``
    returns a :class:`BertOutput` with ``last_hidden_state`` (B, T, H) and ``pooler_output``
    (B, H), plus every layer's output and attention probabilities when asked.

    **Unpadded path** (the default for a batch with padding, in training and inference): the
    N real tokens are packed into one (N, H) tensor right after the embeddings, every layer
    works on them alone (attention per group of similar-length sequences, see
    :func:`bertkit.modeling.layers.pack_batch`), and the result is put back on the (B, T) grid
    at the end. **Padding positions of ``last_hidden_state`` (and of ``hidden_states``) are
    then zeros**, where the padded path holds vectors nothing should read; real positions are
    the same within float rounding. Every head reads real positions only, except the QA loss
    (transformers' rule: a softmax over all T positions, padding included), which therefore
    differs slightly between the paths on a padded batch, and the pooled vector of a row whose
    position 0 is padding (no real token, or left padding): tanh(dense(0)) here.

    The padded path runs when the batch has no padding (nothing to pack), with
    ``output_attentions=True`` (the (B, N, T, T) maps), under torch.export / tracing, and when
    the switch ``unpad`` (a module attribute, True by default) is False: set it with
    ``model.bert.unpad = False`` or, for a block of code, ``with padded_path(model):``. The ONNX
    export uses it: the packed layout's shapes depend on the data and cannot be traced.
    """

    unpad: bool = True  # the class default; an instance's own value (padded_path) overrides it

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False,
                global_attention_mask: torch.Tensor | None = None) -> BertOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if self.config.local_window(0) is not None:  # Longformer: sliding-window attention
            return self._windowed_forward(input_ids, attention_mask, token_type_ids,
                                          output_hidden_states, global_attention_mask)
        if (self.unpad and attention_mask is not None and not output_attentions
                and not _exporting() and not bool(attention_mask.all())):
            return self._unpadded_forward(input_ids, attention_mask, token_type_ids,
                                          output_hidden_states)
        hidden = self.embeddings(input_ids, token_type_ids)                   # (B, T, H)
        # No padding -> no mask at all, which lets SDPA take its fastest kernel. An export
        # (ONNX) keeps the mask always: the graph must serve padded batches too, and the
        # data-dependent test cannot be traced.
        bias = None
        if attention_mask is not None and (_exporting() or not bool(attention_mask.all())):
            bias = padding_mask_bias(attention_mask, hidden.dtype)            # (B, 1, 1, T)
        hidden, all_hidden, all_attentions = self.encoder(
            hidden, bias, output_attentions, output_hidden_states)
        pooled = self.pooler(hidden) if self.pooler is not None else None    # (B, H)
        return BertOutput(hidden, pooled, all_hidden, all_attentions)

    def _windowed_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          token_type_ids: torch.Tensor | None, output_hidden_states: bool,
                          global_attention_mask: torch.Tensor | None) -> BertOutput:
        """Sliding-window attention with global tokens (``global_attention_mask`` (B, T), 1 =
        global) on the padded path; no attention maps (they are not (T, T) matrices)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = WindowMask.build(attention_mask, global_attention_mask)
        hidden = self.embeddings(input_ids, token_type_ids)                   # (B, T, H)
        hidden, all_hidden, _ = self.encoder(hidden, mask, False, output_hidden_states)
        pooled = self.pooler(hidden) if self.pooler is not None else None    # (B, H)
        return BertOutput(hidden, pooled, all_hidden, None)

    def _unpadded_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          token_type_ids: torch.Tensor | None,
                          output_hidden_states: bool) -> BertOutput:
        """The same outputs, computed on the real tokens only (zeros at padding positions)."""
        packed = pack_batch(attention_mask, self.embeddings.LayerNorm.weight.dtype)
        hidden = self.embeddings(input_ids, token_type_ids, packed)          # (N, H)
        hidden, all_hidden, _ = self.encoder(hidden, None, False, output_hidden_states, packed)
        hidden = packed.unpack(hidden)                                        # (B, T, H)
        if all_hidden is not None:
            all_hidden = tuple(packed.unpack(h) for h in all_hidden)          # L + 1 of (B, T, H)
        pooled = self.pooler(hidden) if self.pooler is not None else None    # (B, H)
        return BertOutput(hidden, pooled, all_hidden, None)


@contextlib.contextmanager
def padded_path(model: nn.Module) -> Iterator[nn.Module]:
    """Run every :class:`BertModel` inside ``model`` on the padded path for the block (sets
    ``unpad = False``, restores each one's own value afterwards); yields ``model``."""
    encoders = [m for m in model.modules() if isinstance(m, BertModel)]
    saved = [m.unpad for m in encoders]
    for m in encoders:
        m.unpad = False
    try:
        yield model
    finally:
        for m, value in zip(encoders, saved):
            m.unpad = value


# ---------------------------------------------------------------------------- heads
class MaskedLMHead(nn.Module):
    """Dense + activation + LayerNorm, then a projection onto the vocabulary whose matrix is
    the word embedding matrix (tied, as in BERT) plus a per-word bias."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding,
                 activation: str | None = None):
        super().__init__()
        width = word_embeddings.embedding_dim  # E: H, or ALBERT's factorised width
        self.dense = nn.Linear(config.hidden_size, width)
        self.activation = ACTIVATIONS[activation or config.hidden_act]  # RoBERTa: always gelu
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.word_embeddings = [word_embeddings]  # a list: tied, not a second registered copy
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V)."""
        hidden = self.norm(self.activation(self.dense(hidden)))
        return F.linear(hidden, self.word_embeddings[0].weight, self.bias)


def masked_lm_logits_and_loss(head: MaskedLMHead, hidden: torch.Tensor,
                              labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Project onto the vocabulary; with labels, only at the masked positions.

    Original BERT gathers the ~15% masked positions before the vocabulary projection: for a
    small model the (B*T, H) x (H, V) product over all positions would be most of the step.

    Returns logits (B, T, V) without labels, or (M, V) for the M positions where
    ``labels != -100`` (row-major order) with the mean cross-entropy there.
    """
    if labels is None:
        return head(hidden), None
    selected = labels != IGNORE_INDEX                                         # (B, T)
    logits = head(hidden[selected])                                           # (M, V)
    if logits.size(0) == 0:
        return logits, logits.sum() * 0.0  # no masked token: zero loss, graph kept for DDP
    return logits, F.cross_entropy(logits, labels[selected])


class BertForPreTraining(BertPreTrainedModel):
    """BERT with its two pretraining heads: masked language modelling and next-sentence
    prediction. ``labels`` (B, T) hold the original ids at masked positions and -100 elsewhere;
    ``next_sentence_label`` (B,) is 0 for IsNext, 1 for NotNext. The loss is their sum."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config, self.bert.embeddings.word_embeddings)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> PreTrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        prediction_logits, mlm_loss = masked_lm_logits_and_loss(self.mlm, out.last_hidden_state, labels)
        nsp_logits = self.nsp(out.pooler_output)                              # (B, 2)
        nsp_loss = None
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits, next_sentence_label.view(-1))
        losses = [loss for loss in (mlm_loss, nsp_loss) if loss is not None]
        loss = sum(losses) if losses else None
        return PreTrainingOutput(loss, prediction_logits, nsp_logits, mlm_loss, nsp_loss,
                                 out.hidden_states, out.attentions)


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with the masked-language-model head only (no pooler, as in transformers)."""

    mlm_activation: str | None = None  # the head's activation (None: the config's hidden_act)

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mlm = MaskedLMHead(config, self.bert.embeddings.word_embeddings, self.mlm_activation)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> MaskedLMOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        logits, loss = masked_lm_logits_and_loss(self.mlm, out.last_hidden_state, labels)
        return MaskedLMOutput(loss, logits, out.hidden_states, out.attentions)


def _classifier_dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout
    return nn.Dropout(config.hidden_dropout_prob if p is None else p)


# ---------------------------------------------------------------------------- task losses
# Functions of the logits alone, so that a head computed elsewhere (onnxruntime) gets the same
# loss; the rules are transformers'.
def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                                 problem_type: str | None = None) -> torch.Tensor:
    """logits (B, C), labels (B,) or (B, C) -> loss. Without ``problem_type``: one output is
    regression (MSE), integer labels single-label (cross-entropy), else multi-label (BCE)."""
    if problem_type is None:
        if logits.size(-1) == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels.view(-1).long())
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, T, C), labels (B, T) with -100 where ignored -> mean cross-entropy."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1).long(),
                           ignore_index=IGNORE_INDEX)


def question_answering_loss(start_logits: torch.Tensor, end_logits: torch.Tensor,
                            start_positions: torch.Tensor,
                            end_positions: torch.Tensor) -> torch.Tensor:
    """start/end logits (B, T), positions (B,) -> the mean of the two cross-entropies."""
    length = start_logits.size(1)
    # As transformers: a position past the end is clamped to T and ignored.
    start = start_positions.view(-1).long().clamp(0, length)
    end = end_positions.view(-1).long().clamp(0, length)
    return (F.cross_entropy(start_logits, start, ignore_index=length)
            + F.cross_entropy(end_logits, end, ignore_index=length)) / 2


class _EncoderWithClassifier(BertPreTrainedModel):
    """The encoder, dropout and one Linear to ``num_labels``: what the sequence and the token
    classification heads share (HF names ``bert.*``, ``classifier.*``)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=add_pooling_layer)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()


class BertForSequenceClassification(_EncoderWithClassifier):
    """A linear classifier on the pooled [CLS] vector.

    ``labels`` (B,): class ids (cross-entropy), or floats when ``num_labels == 1`` (regression,
    MSE), or (B, C) multi-hot floats when ``problem_type == "multi_label_classification"``
    (binary cross-entropy) — the rules of transformers.
    """

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output))             # (B, C)
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, self.config.problem_type)
        return ClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class BertForTokenClassification(_EncoderWithClassifier):
    """A linear classifier on every token (NER). ``labels`` (B, T), -100 where ignored."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))          # (B, T, C)
        loss = None if labels is None else token_classification_loss(logits, labels)
        return ClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Extractive QA: a start and an end score for every token.

    ``start_positions`` / ``end_positions`` (B,) index the answer's first and last token; 0
    (the [CLS] token) means no answer. Positions outside the sequence are ignored in the loss.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                output_attentions: bool = False,
                output_hidden_states: bool = False) -> QuestionAnsweringOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)                       # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]             # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states,
                                       out.attentions)


HEAD_CLASSES = {cls.__name__: cls for cls in (
    BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
    BertForTokenClassification, BertForQuestionAnswering)}


# ---------------------------------------------------------------------------- the BERT family
# (model_type, BERT class name) -> the family's class: RoBERTa, DistilBERT and ALBERT modules
# register theirs (register_family_class), and bertkit/__init__.py imports every family, so
# the table is full once bertkit is imported. HEAD_CLASSES gets them by name too.
FAMILY_CLASSES: dict[tuple[str, str], type[BertPreTrainedModel]] = {}


def register_family_class(cls: type[BertPreTrainedModel], bert_class: type) -> None:
    """Make ``cls`` (of ``cls.config_class``'s family) the family's version of ``bert_class``."""
    model_type = cls.config_class.__dataclass_fields__["model_type"].default
    cls.bert_class = bert_class
    FAMILY_CLASSES[(model_type, bert_class.__name__)] = cls
    HEAD_CLASSES[cls.__name__] = cls


def bert_class_name(name: str) -> str:
    """The BERT class a family class name stands for (``RobertaForMaskedLM`` ->
    ``BertForMaskedLM``); other names unchanged."""
    cls = HEAD_CLASSES.get(name)
    return getattr(cls, "bert_class", cls).__name__ if cls is not None else name


def family_class(cls: type, folder: str | os.PathLike) -> type:
    """The class to build for ``folder``: ``cls`` when the folder is of its family, else the
    folder family's version of ``cls``'s BERT class. A model class bertkit does not register
    (a task's own encoder wrapper) is kept: its BertModel follows the config."""
    if not os.path.isfile(os.path.join(os.fspath(folder), "config.json")):
        return cls  # load_model reports the missing folder or file
    model_type = read_config_file(folder)[1].get("model_type", "bert")
    own = getattr(cls, "config_class", BertConfig).__dataclass_fields__["model_type"].default
    if model_type == own:
        return cls
    bert_class = getattr(cls, "bert_class", cls)
    if (model_type, bert_class.__name__) in FAMILY_CLASSES:
        return FAMILY_CLASSES[(model_type, bert_class.__name__)]
    if model_type == "bert" and bert_class.__name__ in HEAD_CLASSES:
        return bert_class
    if bert_class.__name__ in HEAD_CLASSES:
        raise ValueError(f"{os.fspath(folder)} is a {model_type} model, and bertkit has no "
                         f"{model_type} version of {bert_class.__name__}")
    return cls
