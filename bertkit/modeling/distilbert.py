"""DistilBERT (Sanh et al., 2019): a 6-layer BERT distilled from BERT-base.

Its layers are BERT's; what differs is in :class:`~bertkit.config.DistilBertConfig` (no token
type embeddings, its own config.json keys) and here: no pooler, and the sequence classifier
``pre_classifier`` (H -> H) + ReLU + dropout + ``classifier`` on the first token. The HF names
(``distilbert.transformer.layer.{i}.attention.q_lin`` ...) are mapped in
:mod:`bertkit.checkpoint`. Shapes: B batch, T length, H hidden, C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.config import DistilBertConfig
from bertkit.modeling.bert import (BertForMaskedLM, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel, BertPreTrainedModel, ClassifierOutput,
                                   QuestionAnsweringOutput, question_answering_loss,
                                   register_family_class, sequence_classification_loss)


class DistilBertModel(BertModel):
    """The DistilBERT encoder: embeddings (word + position), L BERT layers, no pooler."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig, add_pooling_layer: bool = False):
        super().__init__(config, add_pooling_layer=False)  # DistilBERT has no pooler


class DistilBertForMaskedLM(BertForMaskedLM):
    """DistilBERT with its MLM head (vocab_transform, activation, vocab_layer_norm, tied
    vocab_projector)."""

    config_class = DistilBertConfig


class DistilBertForSequenceClassification(BertPreTrainedModel):
    """``pre_classifier`` (H -> H), ReLU, dropout (``seq_classif_dropout``), ``classifier``
    (H -> C) on the first token's hidden state; ``labels`` as BERT's classifier takes them."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False,
                output_hidden_states: bool = False) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, None, output_attentions, output_hidden_states)
        first = F.relu(self.pre_classifier(out.last_hidden_state[:, 0]))      # (B, H)
        logits = self.classifier(self.dropout(first))                         # (B, C)
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, self.config.problem_type)
        return ClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class DistilBertForTokenClassification(BertForTokenClassification):
    """DistilBERT with a linear classifier on every token (as BERT's)."""

    config_class = DistilBertConfig


class DistilBertForQuestionAnswering(BertForQuestionAnswering):
    """DistilBERT's QA head: dropout (``qa_dropout``), then start/end scores (as BERT's)."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.qa_dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> QuestionAnsweringOutput:
        out = self.bert(input_ids, attention_mask, None, output_attentions, output_hidden_states)
        logits = self.qa_outputs(self.dropout(out.last_hidden_state))         # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]             # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions,
                                           end_positions)
        return QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states,
                                       out.attentions)


for _cls, _bert in ((DistilBertModel, BertModel), (DistilBertForMaskedLM, BertForMaskedLM),
                    (DistilBertForSequenceClassification, BertForSequenceClassification),
                    (DistilBertForTokenClassification, BertForTokenClassification),
                    (DistilBertForQuestionAnswering, BertForQuestionAnswering)):
    register_family_class(_cls, _bert)
