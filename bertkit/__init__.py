"""bertkit: the Transformer and BERT from scratch in PyTorch, reading and writing Hugging Face
model folders at every stage (tokenizer, pretraining, fine-tuning, compression, serving)."""

from bertkit.config import BertConfig
from bertkit.modeling.bert import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel)
from bertkit.tokenizer import Tokenizer
from bertkit.version import __version__

__all__ = ["BertConfig", "Tokenizer", "BertModel", "BertForPreTraining", "BertForMaskedLM",
           "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering", "__version__"]
