"""Open a fine-tuned model folder, in one place: its task, labels, settings, the PEFT adapter
and the runtime that runs it.

A task folder is what ``bertkit finetune`` writes (``config.json`` with ``bertkit_task`` and the
``bertkit_*`` settings, the head's weights, the tokenizer), a PEFT adapter folder (base model +
adapter + head), or a folder fine-tuned by transformers (the task guessed from
``architectures``). Prediction, evaluation, serving and the compression commands all open
folders through :func:`open_task_folder`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from bertkit.config import BertConfig
from bertkit.inference import load_for_inference
from bertkit.peft import is_adapter_folder, load_adapter
from bertkit.runtime.onnx import load_for_onnx_inference
from bertkit.tasks import TASKS, get_task
from bertkit.tasks.base import TASK_KEY, Task, TaskSettings
from bertkit.tokenizer import Tokenizer

RUNTIMES = ("torch", "onnx")  # inference engines: PyTorch, or the exported model.onnx


@dataclass
class TaskFolder:
    """A fine-tuned folder opened for inference.

    ``model`` is in eval mode (a torch head, a PEFT model, or an onnxruntime session that is
    called like one); ``settings`` are the folder's ``bertkit_*`` values with defaults for
    the ones it does not record.
    """

    path: str
    model: Any
    tokenizer: Tokenizer
    task: Task
    settings: TaskSettings

    @property
    def id2label(self) -> dict[int, str] | None:
        """The model's label names by id (classification, NER), else None."""
        return self.task.id2label(self.model.config)

    @property
    def label2id(self) -> dict[str, int] | None:
        id2label = self.id2label
        return {name: i for i, name in id2label.items()} if id2label is not None else None


def folder_task(folder: str, config: BertConfig | None = None,
                task: str | None = None) -> str:
    """The task name of a fine-tuned folder: ``bertkit_task`` in its config.json, else guessed
    from ``architectures`` (a folder fine-tuned by transformers); a ValueError for a folder
    without a task head. ``task`` names the task of a folder that records none (a
    sentence-transformers folder evaluated zero-shot for retrieval); a folder that records
    another task is a ValueError."""
    config = config or BertConfig.from_pretrained(folder)
    name = config.extra.get(TASK_KEY)
    if task is not None:
        get_task(task)  # a ValueError listing the tasks for an unknown name
        if isinstance(name, str) and name in TASKS and name != task:
            raise ValueError(f"{folder} is a {name} model (config.json bertkit_task), not {task}")
        return task
    if isinstance(name, str) and name in TASKS:
        return name
    for candidate in TASKS.values():
        if candidate.is_head_of(config):
            return candidate.name
    arch = (config.architectures or [None])[0]
    raise ValueError(f"{folder} is not a fine-tuned task model (architectures: {arch}); "
                     "fine-tune it first (bertkit finetune --task ...)")


def open_task_folder(folder: str, device: str | None = None,
                     runtime: str = "torch", task: str | None = None) -> TaskFolder:
    """Load a fine-tuned folder (full model or PEFT adapter folder) for inference; ``task``
    names the task of a folder that records none (see :func:`folder_task`).

    ``runtime="onnx"`` loads ``folder/model.onnx`` (written by ``bertkit export``) into an
    onnxruntime session on the CPU instead of the PyTorch weights. ``device`` defaults to
    CUDA when available (torch runtime).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if runtime == "onnx":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the onnx runtime runs on the CPU, not {device}")
        model, tokenizer = load_for_onnx_inference(folder)
        task_name = folder_task(folder, model.config, task)
    elif is_adapter_folder(folder):  # a PEFT folder: base model + adapter + head
        model = load_adapter(folder, device=device)
        task_name = folder_task(folder, model.config, task)
        tokenizer = Tokenizer.from_pretrained(folder)
    else:
        task_name = folder_task(folder, task=task)
        model, tokenizer = load_for_inference(folder, get_task(task_name).head, device=device)
    opened_task = get_task(task_name)
    settings = TaskSettings.from_config(model.config, opened_task,
                                        source=os.path.join(folder, "config.json"))
    return TaskFolder(folder, model, tokenizer, opened_task, settings)
