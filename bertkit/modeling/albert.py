"""ALBERT (Lan et al., 2020): BERT with factorised embeddings and layers shared across depth.

Both ideas are config values (:class:`~bertkit.config.AlbertConfig`) that the shared blocks
read: the embeddings are ``embedding_size`` (E) wide and the encoder projects them to H
(``embedding_projection``); the encoder holds ``num_hidden_groups * inner_group_num`` distinct
layers and runs them ``num_hidden_layers`` times (``config.layer_order()``). The MLM head maps
H -> E before the tied E -> V decoder. The second pretraining objective is sentence-order
prediction (SOP): the NSP head's place, trained on swapped consecutive segments. HF names
(``albert.encoder.albert_layer_groups.{g}.albert_layers.{j}`` ...) are mapped in
:mod:`bertkit.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn

from bertkit.config import AlbertConfig
from bertkit.modeling.bert import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel, PreTrainingOutput, register_family_class)


class AlbertModel(BertModel):
    """The ALBERT encoder (factorised embeddings, shared layers, tanh pooler)."""

    config_class = AlbertConfig


class AlbertForPreTraining(BertForPreTraining):
    """ALBERT with MLM and sentence-order prediction. ``sentence_order_label`` (B,): 0 when the
    two segments are in their original order, 1 when swapped (transformers' convention)."""

    config_class = AlbertConfig

    def __init__(self, config: AlbertConfig):
        super().__init__(config)
        # transformers' AlbertSOPHead has num_labels outputs (2 unless set otherwise).
        self.nsp = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                sentence_order_label: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> PreTrainingOutput:
        order = sentence_order_label if sentence_order_label is not None else next_sentence_label
        return super().forward(input_ids, attention_mask, token_type_ids, labels, order,
                               output_attentions, output_hidden_states)


class AlbertForMaskedLM(BertForMaskedLM):
    config_class = AlbertConfig


class AlbertForSequenceClassification(BertForSequenceClassification):
    config_class = AlbertConfig

    def __init__(self, config: AlbertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)  # ALBERT's own key


class AlbertForTokenClassification(BertForTokenClassification):
    config_class = AlbertConfig

    def __init__(self, config: AlbertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)


class AlbertForQuestionAnswering(BertForQuestionAnswering):
    config_class = AlbertConfig


for _cls, _bert in ((AlbertModel, BertModel), (AlbertForPreTraining, BertForPreTraining),
                    (AlbertForMaskedLM, BertForMaskedLM),
                    (AlbertForSequenceClassification, BertForSequenceClassification),
                    (AlbertForTokenClassification, BertForTokenClassification),
                    (AlbertForQuestionAnswering, BertForQuestionAnswering)):
    register_family_class(_cls, _bert)
