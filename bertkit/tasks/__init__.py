"""The task layer: each fine-tuning task in its own module, registered in one table.

===================  =====================================================================
base.py              the :class:`Task` interface, :class:`TaskSettings` (the ``bertkit_*``
                     keys of config.json), the shared length-sorted forward pass
classification.py    classification and regression (one text or a pair)
ner.py               named-entity recognition (BIO tags, entities with character spans)
qa.py                extractive question answering (SQuAD v1.1 / v2.0)
relation.py          relation extraction (two marked entities, entity-start markers' vectors)
retrieval.py         bi-encoder retrieval (query, positive[, negative]; sentence-transformers layout)
rerank.py            cross-encoder re-ranking (query, document, relevance)
metrics.py           the metrics the tasks report
folder.py            open a fine-tuned folder (task, labels, settings, adapter, runtime)
evaluate.py          :func:`~bertkit.tasks.evaluate.evaluate_folder`, split metrics, reports
predict.py           :func:`~bertkit.tasks.predict.load_predictor`, ``predict_folder``
===================  =====================================================================

**A new task is one new file plus one line in** :data:`TASKS`: a module with a :class:`Task`
subclass (examples, encoding, head, outputs, predictions, metrics) and its instance, added to
the table below. Fine-tuning, evaluation, prediction, serving and compression look tasks up
here and never branch on a task's name.
"""

from __future__ import annotations

from bertkit.tasks.base import PredictInputs, Split, Task, TaskSettings, forward_items
from bertkit.tasks.classification import CLASSIFICATION, REGRESSION
from bertkit.tasks.ner import NER
from bertkit.tasks.qa import QA
from bertkit.tasks.relation import RELATION
from bertkit.tasks.rerank import RERANK
from bertkit.tasks.retrieval import RETRIEVAL

TASKS: dict[str, Task] = {
    "classification": CLASSIFICATION,
    "regression": REGRESSION,
    "ner": NER,
    "qa": QA,
    "relation": RELATION,
    "retrieval": RETRIEVAL,
    "rerank": RERANK,
}


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ValueError listing the tasks otherwise."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return task


__all__ = ["TASKS", "get_task", "Task", "TaskSettings", "Split", "PredictInputs",
           "forward_items"]
