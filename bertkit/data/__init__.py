"""Data: the pretraining pipeline (corpus → shards → examples → masked batches), the fine-tuning
file readers, the collators, and the embedded default corpus and demo task built from the
Python standard library's docstrings.

The ready collators (a list of dataset items -> a dict of padded tensors for ``model(**batch)``):

- :class:`PaddingCollator`: pads token ids, builds ``attention_mask``, pads sequence labels
  with -100 (classification, regression, NER, QA items; any dicts of id lists);
- :class:`MlmCollator`: pads and applies BERT's dynamic masked-language-model masking;
- :class:`Seq2SeqCollator`: pads source and target ids of a translation pair.
"""

from bertkit.data.parallel import Seq2SeqCollator
from bertkit.data.pretraining import MlmCollator
from bertkit.data.tasks import PaddingCollator, TaskDataset

__all__ = ["PaddingCollator", "MlmCollator", "Seq2SeqCollator", "TaskDataset"]
