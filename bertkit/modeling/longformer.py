"""Longformer (Beltagy et al., 2020): RoBERTa with sliding-window attention and global tokens,
for documents of thousands of tokens.

The attention mode lives in the one attention of :mod:`bertkit.modeling.layers`
(:func:`~bertkit.modeling.layers.sliding_window_attention`; each layer's window from
:class:`~bertkit.config.LongformerConfig`); the encoder is BERT's. The heads are RoBERTa's, and
put global attention where transformers' Longformer heads do: on ``<s>`` for sequence
classification, on the question (the tokens before the first ``</s>``) for QA, nowhere for
MLM and token classification unless ``global_attention_mask`` is given. Runs on the padded
path (the packed layout has no windows).
"""

from __future__ import annotations

import torch

from bertkit.config import LongformerConfig
from bertkit.modeling.bert import (BertForMaskedLM, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel, ClassifierOutput, MaskedLMOutput,
                                   QuestionAnsweringOutput, masked_lm_logits_and_loss,
                                   question_answering_loss, register_family_class,
                                   sequence_classification_loss, token_classification_loss)
from bertkit.modeling.roberta import RobertaForSequenceClassification


class LongformerModel(BertModel):
    """The Longformer encoder; ``forward(..., global_attention_mask=(B, T) 1/0)``."""

    config_class = LongformerConfig


class LongformerForMaskedLM(BertForMaskedLM):
    """RoBERTa's MLM head (gelu); no global token unless ``global_attention_mask`` says."""

    config_class = LongformerConfig
    mlm_activation = "gelu"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                global_attention_mask: torch.Tensor | None = None) -> MaskedLMOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, False, output_hidden_states,
                        global_attention_mask)
        logits, loss = masked_lm_logits_and_loss(self.mlm, out.last_hidden_state, labels)
        return MaskedLMOutput(loss, logits, out.hidden_states, None)


class LongformerForTokenClassification(BertForTokenClassification):
    """A linear classifier on every token; no global token unless given."""

    config_class = LongformerConfig

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                global_attention_mask: torch.Tensor | None = None) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, False, output_hidden_states,
                        global_attention_mask)
        logits = self.classifier(self.dropout(out.last_hidden_state))          # (B, T, C)
        loss = None if labels is None else token_classification_loss(logits, labels)
        return ClassifierOutput(loss, logits, out.hidden_states, None)


class LongformerForSequenceClassification(RobertaForSequenceClassification):
    """RoBERTa's classifier; global attention on the first token unless given."""

    config_class = LongformerConfig

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                global_attention_mask: torch.Tensor | None = None) -> ClassifierOutput:
        if global_attention_mask is None:
            global_attention_mask = torch.zeros_like(input_ids)
            global_attention_mask[:, 0] = 1                                   # (B, T)
        out = self.bert(input_ids, attention_mask, token_type_ids, False, output_hidden_states,
                        global_attention_mask)
        logits = self.classifier(out.last_hidden_state)                       # (B, C)
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, self.config.problem_type)
        return ClassifierOutput(loss, logits, out.hidden_states, None)


class LongformerForQuestionAnswering(BertForQuestionAnswering):
    """Start/end scores; global attention on the question (the tokens before the first
    ``sep_token_id``) unless given, as transformers' LongformerForQuestionAnswering."""

    config_class = LongformerConfig

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False,
                global_attention_mask: torch.Tensor | None = None) -> QuestionAnsweringOutput:
        if global_attention_mask is None:
            is_sep = input_ids == self.config.sep_token_id                    # (B, T)
            first_sep = torch.where(is_sep.any(1), is_sep.int().argmax(1),
                                    torch.zeros_like(is_sep[:, 0], dtype=torch.long))
            positions = torch.arange(input_ids.size(1), device=input_ids.device)
            global_attention_mask = (positions[None, :] < first_sep[:, None]).long()
        out = self.bert(input_ids, attention_mask, token_type_ids, False, output_hidden_states,
                        global_attention_mask)
        logits = self.qa_outputs(out.last_hidden_state)                       # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]             # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions,
                                           end_positions)
        return QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states, None)


for _cls, _bert in ((LongformerModel, BertModel), (LongformerForMaskedLM, BertForMaskedLM),
                    (LongformerForSequenceClassification, BertForSequenceClassification),
                    (LongformerForTokenClassification, BertForTokenClassification),
                    (LongformerForQuestionAnswering, BertForQuestionAnswering)):
    register_family_class(_cls, _bert)


def longformer_from_model(model: BertModel, attention_window: int = 512,
                          max_positions: int | None = None) -> LongformerModel:
    """A :class:`LongformerModel` from a BERT-family encoder (BERT, RoBERTa), as Longformer
    was made from RoBERTa: the same weights, each layer's global projections copied from its
    local ones, and the position table extended to ``max_positions`` tokens by repeating the
    learned rows (position p takes row p mod the original count). Fine-tune it before
    trusting it past the original length; with a window covering the whole input it computes
    exactly what ``model`` does."""
    source = model.config
    tokens = max_positions or source.max_tokens
    values = {k: v for k, v in source.to_dict().items()
              if k not in ("model_type", "architectures", "max_position_embeddings",
                           "layer_norm_eps")}
    config = LongformerConfig.from_dict({
        **values, "attention_window": attention_window, "layer_norm_eps": source.layer_norm_eps,
        "max_position_embeddings": tokens + source.pad_token_id + 1})
    longformer = LongformerModel(config, add_pooling_layer=model.pooler is not None)
    state = {k: v for k, v in model.state_dict().items()
             if k != "embeddings.position_embeddings.weight"}
    longformer.load_state_dict(state, strict=False)
    old = model.embeddings.position_embeddings.weight.detach()               # (P, H)
    first = source.position_offset                                            # row of token 0
    learned = old[first:first + source.max_tokens]                            # (P', H)
    with torch.no_grad():
        table = longformer.embeddings.position_embeddings.weight              # (P'', H)
        offset = config.position_offset
        repeats = learned.repeat(-(-tokens // learned.size(0)), 1)[:tokens]  # (tokens, H)
        table[offset:offset + tokens] = repeats
        table[:offset] = old[:offset] if first else 0.0
        for layer in longformer.encoder.layers:
            attention = layer.attention
            for name in ("query", "key", "value"):
                getattr(attention, name + "_global").load_state_dict(
                    getattr(attention, name).state_dict())
    return longformer.eval() if not model.training else longformer
