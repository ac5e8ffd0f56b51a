"""bertkit: the Transformer and BERT from scratch in PyTorch, reading and writing Hugging Face
model folders at every stage (tokenizer, pretraining, fine-tuning, compression, serving).

The whole life of a model from Python (see :mod:`bertkit.api`)::

    result = bertkit.finetune(model=folder, train=records_or_path, dev=..., out="clf", epochs=3)
    clf = bertkit.load("clf"); clf.predict(["a text"]); clf.evaluate(records_or_path)

and the building blocks: the models and tokenizer below, :class:`Trainer` (one loop for every
task, with ``compute_metrics``, ``evaluate`` and ``predict``), the collators in
:mod:`bertkit.data`.
"""

from bertkit.api import TaskModel, finetune, load, serving_app
from bertkit.config import (AlbertConfig, BertConfig, DistilBertConfig, LongformerConfig,
                            RobertaConfig)
from bertkit.modeling.bert import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel)
from bertkit.tokenizer import BPETokenizer, Tokenizer
# The BERT family (issue 18): importing the modules registers each family's classes, so that
# BertFor*.from_pretrained on a RoBERTa / DistilBERT / ALBERT folder builds that family's class.
from bertkit.modeling.albert import AlbertForMaskedLM, AlbertForPreTraining, AlbertModel
from bertkit.modeling.distilbert import DistilBertForMaskedLM, DistilBertModel
from bertkit.modeling.longformer import LongformerForMaskedLM, LongformerModel
from bertkit.modeling.roberta import RobertaForMaskedLM, RobertaModel
from bertkit.training.finetune import FinetuneResult
from bertkit.training.trainer import EvalPrediction, PredictionOutput, Trainer, TrainingConfig
from bertkit.version import __version__

__all__ = ["BertConfig", "Tokenizer", "BertModel", "BertForPreTraining", "BertForMaskedLM",
           "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering", "finetune", "load", "serving_app", "TaskModel",
           "FinetuneResult", "Trainer", "TrainingConfig", "EvalPrediction", "PredictionOutput",
           "__version__", "BPETokenizer", "RobertaConfig", "DistilBertConfig", "AlbertConfig",
           "RobertaModel", "RobertaForMaskedLM", "DistilBertModel", "DistilBertForMaskedLM",
           "AlbertModel", "AlbertForMaskedLM", "AlbertForPreTraining", "LongformerConfig",
           "LongformerModel", "LongformerForMaskedLM"]
