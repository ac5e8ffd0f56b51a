"""The model behind ``bertkit serve``: a folder loaded once, and what each route asks of it.

A folder may be fine-tuned for a task (classification, regression, NER, QA; a full model or a
PEFT adapter folder), or a plain encoder / pretraining folder. What it can answer follows:

=================  =======================================================================
/v1/predict        a task folder (:class:`bertkit.tasks.predict.Predictor`)
/v1/embed          any folder with a torch BERT encoder (mean-pooled last hidden states)
/v1/fill-mask      a folder saved with an MLM head (BertForPreTraining / BertForMaskedLM)
/v1/explain        any torch folder (attributions need a task or MLM head; attention
                   rollout works on a bare encoder); run by :mod:`bertkit.serve.explaining`
=================  =======================================================================
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from torch import nn

from bertkit.config import BertConfig
from bertkit.inference import embed, fill_mask, load_for_inference
from bertkit.modeling.bert import BertForMaskedLM, BertModel
from bertkit.peft import is_adapter_folder
from bertkit.serve.batching import length_buckets
from bertkit.tasks import get_task
from bertkit.tasks.folder import folder_task
from bertkit.tasks.predict import load_predictor

MLM_ARCHITECTURES = ("BertForPreTraining", "BertForMaskedLM")


@dataclass
class ServedModel:
    """A loaded folder and the routes it supports (``task`` None: no task head)."""
    folder: str
    model: nn.Module
    tokenizer: object
    task: str | None
    runtime: str = "torch"
    predictor: object | None = None
    architecture: str = ""
    max_length: int = 512
    routes: list[str] = field(default_factory=list)

    @property
    def encoder(self) -> nn.Module | None:
        """The torch BERT encoder (None for an ONNX runtime session)."""
        if isinstance(self.model, BertModel):
            return self.model
        encoder = getattr(self.model, "bert", None)
        return encoder if isinstance(encoder, nn.Module) else None

    @property
    def has_mlm(self) -> bool:
        return isinstance(getattr(self.model, "mlm", None), nn.Module)

    @property
    def labels(self) -> list[str] | None:
        return self.predictor.labels if self.predictor is not None else None

    def info(self) -> dict:
        """What the page and /metrics show about the model (no paths beyond its folder name)."""
        config = getattr(self.model, "config", None)
        return {"name": os.path.basename(os.path.normpath(self.folder)),
                "task": self.task or "none",
                "architecture": self.architecture, "runtime": self.runtime,
                "hidden_size": getattr(config, "hidden_size", None),
                "layers": getattr(config, "num_hidden_layers", None),
                "max_length": self.max_length, "labels": self.labels, "routes": self.routes}

    # ------------------------------------------------------------------ running
    def token_lengths(self, route: str, items: list) -> tuple[list[int], int]:
        """Per item, the tokens the model reads (special tokens included, after truncation),
        and how many items were truncated.

        The length limit is the folder's max length for /v1/predict (QA contexts are windowed,
        nothing is cut), the tokenizer's for /v1/embed and /v1/fill-mask.
        """
        lengths, cut = self._lengths(route, items)
        return lengths, sum(cut)

    def _lengths(self, route: str, items: list) -> tuple[list[int], list[bool]]:
        """:meth:`token_lengths`, with a truncated flag per item."""
        segments = [item if isinstance(item, tuple) else (item,) for item in items]
        ids = iter(self.tokenizer.encode_plain([t for seg in segments for t in seg]))
        limit = self.max_length if route == "predict" else self.tokenizer.model_max_length
        windowed = route == "predict" and self.task == "qa"
        lengths, cut = [], []
        for seg in segments:
            length = sum(len(next(ids)) for _ in seg) + len(seg) + 1   # [CLS] a [SEP] (b [SEP])
            cut.append(length > limit and not windowed)
            lengths.append(limit if cut[-1] else length)
        return lengths, cut

    def run(self, key: Hashable, items: list, max_padding: float = 0.25,
            wanted: Callable[[int], bool] | None = None) -> tuple[list, dict]:
        """One micro-batch: ``key`` is (route, option..., max_batch). Returns one result per
        item, in order, and stats: ``inputs`` and ``tokens`` computed, ``truncated``,
        ``forward_sizes`` (items per forward pass; passes group texts of similar length, see
        :func:`bertkit.serve.batching.length_buckets`).

        ``wanted(i)`` is asked before each forward pass: items whose request has gone (the
        client closed the connection, or its time ran out) are skipped and get None, so
        abandoned work costs at most the pass already running.
        """
        wanted = wanted or (lambda i: True)
        route, *options = key
        lengths, cut = self._lengths(route, items)
        if route == "fill-mask":
            top_k, = options
            passes = [[i] for i in range(len(items))]  # fill_mask takes one text a call
        elif route == "predict" and self.task == "qa":  # windows its contexts itself: one call
            passes = [list(range(len(items)))]
        else:
            passes = length_buckets(lengths, options[-1], max_padding)
        results: list = [None] * len(items)
        done: list[list[int]] = []
        for indices in passes:
            indices = [i for i in indices if wanted(i)]
            if not indices:
                continue
            chunk = [items[i] for i in indices]
            if route == "fill-mask":
                out = [fill_mask(self.model, self.tokenizer, chunk[0], top_k)]
            elif route == "predict":
                out = self._predict(chunk, batch_size=options[-1])
            elif route == "embed":
                out = embed(self.encoder, self.tokenizer, chunk, batch_size=options[-1],
                            normalize=options[0]).tolist()  # truncated as `bertkit embed` does
            else:
                raise ValueError(f"unknown route {route!r}")
            for i, result in zip(indices, out):
                results[i] = result
            done.append(indices)
        return results, {"inputs": sum(len(p) for p in done),
                         "tokens": sum(lengths[i] for p in done for i in p),
                         "truncated": sum(cut[i] for p in done for i in p),
                         "forward_sizes": [len(p) for p in done]}

    def _predict(self, items: list, batch_size: int) -> list:
        if self.task == "qa":
            return self.predictor.predict(questions=[q for q, _ in items],
                                          contexts=[c for _, c in items], batch_size=batch_size)
        if items and isinstance(items[0], tuple):
            return self.predictor.predict(texts=[t for t, _ in items],
                                          text_pairs=[p for _, p in items], batch_size=batch_size)
        return self.predictor.predict(texts=list(items), batch_size=batch_size)


def load_served_model(folder: str, runtime: str = "torch",
                      device: str | None = None) -> ServedModel:
    """Load ``folder`` for serving: a task folder (full or PEFT adapter) through
    :func:`~bertkit.tasks.predict.load_predictor`, any other BERT folder as its saved
    architecture (encoder, pretraining or MLM model)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if is_adapter_folder(folder):
        has_task = True  # an adapter folder carries its task head (load_predictor reads it)
    else:
        config = BertConfig.from_pretrained(folder)
        try:
            folder_task(folder, config)
            has_task = True
        except ValueError:
            has_task = False  # an encoder or pretraining folder: embeddings (and fill-mask)
    if has_task:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some weights not used"-style noise at startup
            predictor = load_predictor(folder, device=device, runtime=runtime)
        model, tokenizer = predictor.model, predictor.tokenizer
        served = ServedModel(folder, model, tokenizer, predictor.task.name, runtime, predictor,
                             max_length=predictor.settings.max_length)
    else:
        if runtime != "torch":
            raise ValueError(f"{folder} has no task head; the {runtime} runtime serves task "
                             "folders only (use --runtime torch for embeddings and fill-mask)")
        architectures = config.architectures or []
        model_class = None
        if set(MLM_ARCHITECTURES) & set(architectures):
            model_class = BertForMaskedLM  # the pretraining folder's MLM head, as `fill-mask` does
        model, tokenizer = load_for_inference(folder, model_class, device=device)
        served = ServedModel(folder, model, tokenizer, None, runtime,
                             max_length=min(tokenizer.model_max_length,
                                            config.max_position_embeddings))
    if served.task is not None:  # the head class, whatever runs it (PEFT wrapper, ONNX session)
        served.architecture = get_task(served.task).head.__name__
    else:
        served.architecture = (config.architectures or [type(model).__name__])[0]
    served.routes = ((["predict"] if served.task else []) + (["embed"] if served.encoder else [])
                     + (["fill-mask"] if served.has_mlm else [])
                     + (["explain"] if runtime == "torch" else []))
    return served
