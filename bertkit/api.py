"""The Python API: a model's whole life in a few lines, with data from files or from lists.

::

    import bertkit

    result = bertkit.finetune(model="path/to/bert", task="classification", out="clf",
                              train=[{"text": "a fine day", "label": "pos"}, ...],
                              dev="dev.jsonl", epochs=3, lr=5e-5)
    clf = bertkit.load("clf")                           # the folder records its task
    clf.predict(["another fine day"])                   # [{"label": "pos", "probabilities": ...}]
    clf.evaluate([{"text": "a bad day", "label": "neg"}])["accuracy"]
    app = bertkit.serving_app("clf")                    # FastAPI app: uvicorn.run(app)

Each call is a thin layer over the library, so the API and the CLI cannot drift apart:
:func:`finetune` is ``bertkit finetune`` (:func:`bertkit.training.finetune.run_finetuning`),
:func:`load` opens a folder as ``predict``/``evaluate``/``serve`` do
(:func:`bertkit.tasks.folder.open_task_folder`), :func:`serving_app` builds the app of
``bertkit serve``.

Data is a file path (the formats of ``bertkit finetune --train``) or a list of records: dicts
with the fields of the task's files (classification/regression: ``text`` + optional
``text_pair``, ``label``; NER: ``tokens`` and ``tags``; QA: ``question``, ``context``,
``answers``) or the task's example objects, checked as a file is
(:meth:`bertkit.tasks.Task.examples_from_records`; an error names ``train:N``, the N-th record).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
from typing import Any, Mapping, Sequence, Union

from bertkit.outputs import output_folder
from bertkit.peft import DEFAULT_LR
from bertkit.serve.app import ServeConfig, create_app
from bertkit.tasks import Task, get_task
from bertkit.tasks.evaluate import examples_split, split_metrics
from bertkit.tasks.folder import open_task_folder
from bertkit.tasks.predict import Predictor
from bertkit.training.finetune import FinetuneConfig, FinetuneResult, run_finetuning
from bertkit.training.trainer import TrainingConfig

# A data file, or records (dicts with the file's fields, or the task's example objects).
Data = Union[str, os.PathLike, Sequence[Any]]

SPLITS = ("train", "dev", "test")
# finetune()'s own arguments are not options; every other field of the two configs is.
TASK_OPTIONS = tuple(f.name for f in dataclasses.fields(FinetuneConfig)
                     if f.name not in ("task", "model", "peft", *SPLITS))
TRAINING_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainingConfig)
                         if f.name != "out_dir")
LENGTH_OPTIONS = ("epochs", "max_steps", "time_budget")


# ============================================================================ fine-tuning


def finetune(*, model: str | os.PathLike, train: Data, out: str | os.PathLike,
             task: str = "classification", dev: Data | None = None, test: Data | None = None,
             peft: str | None = None, overwrite: bool = False,
             resume_from: str | os.PathLike | None = None, **options: Any) -> FinetuneResult:
    """Fine-tune the BERT folder ``model`` on ``task`` and write the fine-tuned folder ``out``.

    Args:
        model: an HF BERT folder (config.json, weights, vocab.txt).
        train, dev, test: a data file or a list of records (module docstring); dev selects
            the best checkpoint, dev and test are evaluated at the end (``metrics.json``).
        out: the output folder; an existing non-empty one is refused unless ``overwrite``.
        task: a name of :data:`bertkit.tasks.TASKS` (classification, regression, ner, qa).
        peft: lora | adapter | prefix | adalora | bitfit (a frozen base and a small adapter).
        resume_from: continue an interrupted run (``out`` or ``out.partial``).
        options: fields of :class:`~bertkit.training.trainer.TrainingConfig` (``epochs``,
            ``lr``, ``batch_size``, ``max_steps``, ``time_budget``, ``seed``, ``device`` ...)
            and of :class:`~bertkit.training.finetune.FinetuneConfig` (``max_length``,
            ``metric``, ``patience``, ``peft_options``, QA's ``doc_stride`` ...). Defaults
            are ``bertkit finetune``'s: 3 epochs, warmup 10%, lr 5e-5 (PEFT: the method's).

    Returns the run's :class:`~bertkit.training.finetune.FinetuneResult` (``out_dir``,
    ``metrics`` {"dev": ..., "test": ...}, ``labels``, ``train``: steps, stop reason ...).
    An unknown option, bad data or a bad folder is a ValueError (or FileNotFoundError) in one
    line naming it, raised before any training.
    """
    the_task = get_task(task)
    task_options, training_options = _split_options(options, peft)
    training = TrainingConfig(out_dir=os.fspath(out), **training_options)
    data = {"train": train, "dev": dev, "test": test}
    with tempfile.TemporaryDirectory(prefix="bertkit-records-") as folder:
        paths = _data_files(the_task, data, folder)
        config = FinetuneConfig(task=task, model=os.fspath(model), peft=peft, **paths,
                                **task_options)
        return run_finetuning(config, training, resume_from=resume_from, overwrite=overwrite)


def _split_options(options: Mapping[str, Any], peft: str | None) -> tuple[dict, dict]:
    """(FinetuneConfig options, TrainingConfig options with the CLI's defaults); an unknown
    name is a ValueError suggesting the closest known one."""
    known = sorted({*TASK_OPTIONS, *TRAINING_OPTIONS})
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"finetune() got an unknown option {name!r}{hint}; the options "
                             f"are the fields of TrainingConfig and FinetuneConfig: "
                             f"{', '.join(known)}")
    training: dict[str, Any] = {"lr": DEFAULT_LR.get(peft or "", 5e-5),
                                "warmup_ratio": 0.1, "keep_last": 1 if peft else 2}
    if not any(options.get(name) is not None for name in LENGTH_OPTIONS):
        training["epochs"] = 3.0
    training.update((k, v) for k, v in options.items() if k in TRAINING_OPTIONS)
    return {k: v for k, v in options.items() if k in TASK_OPTIONS}, training


def _is_records(data: Data | None) -> bool:
    return data is not None and not isinstance(data, (str, os.PathLike))


def _data_files(task: Task, data: Mapping[str, Data | None], folder: str) -> dict[str, Any]:
    """The run's data paths: a path as given; records checked (dev and test labels against
    train's, errors naming the split and record) and written into ``folder`` as a file."""
    examples = {name: task.examples_from_records(value, name)
                for name, value in data.items() if _is_records(value)}
    if examples.keys() - {"train"}:  # records' labels are checked here, against train's
        source = "train" if "train" in examples else os.fspath(data["train"])
        train = examples.get("train") or task.load_examples(source)
        labels = task.label_map(train, source)
        for name in sorted(examples.keys() - {"train"}):
            task.check_labels(examples[name], labels.label2id if labels is not None else None,
                              name)
    paths: dict[str, Any] = {}
    for name, value in data.items():
        if name in examples:
            paths[name] = os.path.join(folder, name + task.data_suffix)
            task.write_examples(examples[name], paths[name])
        else:
            paths[name] = os.fspath(value) if value is not None else None
    return paths


# ============================================================================ a fine-tuned folder


class TaskModel:
    """A fine-tuned folder loaded once (build it with :func:`load`): predict, evaluate, save.

    ``task`` is the folder's :class:`~bertkit.tasks.Task` (``task.name``: classification,
    regression, ner or qa), ``labels`` its label names (None for regression and QA),
    ``model`` and ``tokenizer`` the loaded pair, ``settings`` the folder's TaskSettings.
    """

    def __init__(self, folder: str, device: str | None = None, runtime: str = "torch"):
        opened = open_task_folder(os.fspath(folder), device, runtime)
        self.folder, self.task, self.settings = opened.path, opened.task, opened.settings
        self.model, self.tokenizer = opened.model, opened.tokenizer
        self._predictor = Predictor(opened.model, opened.tokenizer, opened.task, opened.settings)

    def __repr__(self) -> str:
        return f"<TaskModel {self.task.name} from {self.folder}>"

    @property
    def labels(self) -> list[str] | None:
        """The class / tag names in id order (None for a task without named labels)."""
        return self._predictor.labels

    def predict(self, texts: Sequence[str] | Sequence[tuple[str, str]] | None = None,
                text_pairs: Sequence[str] | None = None, *,
                questions: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                batch_size: int = 32) -> list[dict]:
        """One result dict per input, in order (:func:`bertkit.tasks.predict.predict_folder`
        lists them). Inputs: ``texts`` (a list of strings, or of ``(text, text_pair)``
        pairs; or ``text_pairs`` beside them) for classification, regression and NER;
        ``questions`` and ``contexts`` for QA."""
        if texts is not None and text_pairs is None and not isinstance(texts, str) \
                and len(texts) and all(isinstance(t, tuple) and len(t) == 2 for t in texts):
            texts, text_pairs = [t for t, _ in texts], [p for _, p in texts]
        return self._predictor.predict(texts=texts, text_pairs=text_pairs, questions=questions,
                                       contexts=contexts, batch_size=batch_size)

    def evaluate(self, data: Data, batch_size: int = 64) -> dict:
        """The task's metrics on labelled ``data`` (a file or records, as :func:`finetune`
        takes): what ``metrics.json`` holds for a split (accuracy, macro_f1 / pearson ... /
        f1 / exact_match), ``eval_loss`` and, for classification and NER, the per-class
        ``report`` and its table ``report_text``."""
        if _is_records(data):
            source, examples = "data", self.task.examples_from_records(data, "data")
        else:
            source = os.fspath(data)
            examples = self.task.load_examples(source)
        id2label = self.task.id2label(self.model.config)
        label2id = {name: i for i, name in id2label.items()} if id2label is not None else None
        split = examples_split(self.task, examples, source, self.tokenizer, self.settings,
                               label2id)
        return split_metrics(self.model, self.task, split, self.settings, id2label, batch_size,
                             full=True)

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the model and its tokenizer to ``folder`` (an HF folder ``bertkit.load`` and
        transformers open; a PEFT model writes its adapter folder). An existing non-empty
        folder is refused unless ``overwrite``. Returns ``folder``."""
        if not hasattr(self.model, "save_pretrained"):
            raise ValueError(f"{self.folder} was loaded with the onnx runtime: save the torch "
                             "folder instead")
        with output_folder(folder, inputs={"the model folder": self.folder},
                           overwrite=overwrite) as staging:
            self.model.save_pretrained(str(staging))
            self.tokenizer.save_pretrained(str(staging))
        return os.fspath(folder)


def load(folder: str | os.PathLike, device: str | None = None,
         runtime: str = "torch") -> TaskModel:
    """Load a fine-tuned folder (written by :func:`finetune` / ``bertkit finetune``, a PEFT
    adapter folder, or a task model fine-tuned by transformers) to predict and evaluate.
    ``runtime="onnx"`` runs its exported ``model.onnx``; ``device`` defaults to CUDA when
    there is one."""
    return TaskModel(folder, device, runtime)


def serving_app(folder: str | os.PathLike, **options: Any):
    """The FastAPI app of ``bertkit serve`` for ``folder``: ``uvicorn.run(app, port=8000)``
    serves it, ``fastapi.testclient.TestClient(app)`` calls it in-process. ``options`` are
    :class:`~bertkit.serve.app.ServeConfig` fields (``api_keys_file``, ``max_batch`` ...)."""
    known = [f.name for f in dataclasses.fields(ServeConfig) if f.name != "model"]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(f"serving_app() got an unknown option {unknown[0]!r}; the options are "
                         f"the fields of ServeConfig: {', '.join(known)}")
    return create_app(ServeConfig(model=os.fspath(folder), **options))
