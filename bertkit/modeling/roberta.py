"""RoBERTa (Liu et al., 2019): BERT's encoder, trained longer on more data with MLM only.

What differs from BERT is in :class:`~bertkit.config.RobertaConfig` (positions counted from
``pad_token_id + 1`` over the non-padding tokens, one token type, LayerNorm eps 1e-5), read by
the shared embeddings, plus two heads: the MLM head always uses gelu, and the sequence
classifier is dense + tanh + out_proj on ``<s>`` (no pooler). The HF names (``roberta.``,
``lm_head.``) are mapped in :mod:`bertkit.checkpoint`. Shapes: B batch, T length, H hidden,
C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from bertkit.config import RobertaConfig
from bertkit.modeling.bert import (BertForMaskedLM, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel, BertPreTrainedModel, ClassifierOutput,
                                   register_family_class, sequence_classification_loss)


class RobertaModel(BertModel):
    """The RoBERTa encoder (with a pooler, as transformers' RobertaModel has by default)."""

    config_class = RobertaConfig


class RobertaForMaskedLM(BertForMaskedLM):
    """RoBERTa with its MLM head (``lm_head``: dense, gelu, LayerNorm, tied decoder + bias)."""

    config_class = RobertaConfig
    mlm_activation = "gelu"  # transformers' RobertaLMHead, whatever hidden_act says


class ClassificationHead(nn.Module):
    """Dropout, dense (H -> H), tanh, dropout, out_proj (H -> C) on the first token: the head
    of RoBERTa's sequence classifier (HF names ``classifier.dense``, ``classifier.out_proj``)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        first = self.dropout(hidden[:, 0])                                    # (B, H)
        first = self.dropout(torch.tanh(self.dense(first)))                   # (B, H)
        return self.out_proj(first)                                           # (B, C)


class RobertaForSequenceClassification(BertPreTrainedModel):
    """RoBERTa with :class:`ClassificationHead` on ``<s>``; ``labels`` as
    :class:`~bertkit.modeling.bert.BertForSequenceClassification`'s."""

    config_class = RobertaConfig

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = ClassificationHead(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False,
                output_hidden_states: bool = False) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        logits = self.classifier(out.last_hidden_state)                       # (B, C)
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, self.config.problem_type)
        return ClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class RobertaForTokenClassification(BertForTokenClassification):
    """RoBERTa with a linear classifier on every token (as BERT's)."""

    config_class = RobertaConfig


class RobertaForQuestionAnswering(BertForQuestionAnswering):
    """RoBERTa with start/end scores on every token (as BERT's)."""

    config_class = RobertaConfig


for _cls, _bert in ((RobertaModel, BertModel), (RobertaForMaskedLM, BertForMaskedLM),
                    (RobertaForSequenceClassification, BertForSequenceClassification),
                    (RobertaForTokenClassification, BertForTokenClassification),
                    (RobertaForQuestionAnswering, BertForQuestionAnswering)):
    register_family_class(_cls, _bert)
