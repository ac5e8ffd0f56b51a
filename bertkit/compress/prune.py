"""Pruning a BERT folder: whole attention heads (structured) or single weights (unstructured).

**Head pruning** (Michel et al., 2019, "Are Sixteen Heads Really Better than One?"). Every
head's output is multiplied by a gate ξ_h = 1; the importance of a head is |∂L/∂ξ_h|, the
loss's sensitivity to switching the head off, accumulated over labelled data (per batch, as
transformers' bertology example does) and normalised per layer (L2), so layers with large
gradients do not dominate. The least important heads across all layers are removed, never the
last head of a layer. The gates are applied by forward pre-hooks on each layer's attention
output projection, so the model's forward has no pruning argument.

The pruned heads are recorded in ``config.json`` as ``pruned_heads`` ({layer: [heads]},
transformers' key). The folder keeps full-size tensors with those heads' query/key/value rows
and output columns zeroed, so transformers (which no longer prunes) computes the same logits;
bertkit builds the layers without them and is faster (see :mod:`bertkit.checkpoint`).

**Magnitude pruning**: the given fraction of the encoder's Linear weights with the smallest
absolute value is set to zero, over all of them at once (``scope="global"``) or layer by
layer (``"layer"``). Embeddings, LayerNorms, the pooler and the task head are left alone. The
zeros are written into an ordinary folder; they save compute only on sparse kernels, and disk
only once compressed.

Public API: :func:`head_importance`, :func:`select_heads`, :func:`prune_heads`,
:func:`magnitude_prune`, :func:`run_pruning`, plus the measurements shared with distillation:
:func:`folder_size`, :func:`compare_speed`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bertkit.config import BertConfig
from bertkit.data.tasks import PaddingCollator
from bertkit.modeling.bert import HEAD_CLASSES
from bertkit.outputs import output_folder
from bertkit.peft import is_adapter_folder
from bertkit.tasks import get_task
from bertkit.tasks.base import forward_items
from bertkit.tasks.evaluate import evaluate_folder, headline, load_split
from bertkit.tasks.folder import open_task_folder

REPORT_FILE = "prune.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# The encoder matrices magnitude pruning touches, by bertkit module name inside a layer.
ENCODER_MATRICES = ("attention.query", "attention.key", "attention.value", "attention_output",
                    "ffn.up", "ffn.down")


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    bert = getattr(model, "bert", model)
    if not hasattr(bert, "encoder"):
        raise ValueError(f"{type(model).__name__} is not a BERT model (no encoder)")
    return bert.encoder.layers


# ============================================================================ head pruning


def head_importance(model: nn.Module, dataset, collator, batch_size: int = 16) -> list[torch.Tensor]:
    """Michel et al.'s head importance: |∂L/∂ξ_h| summed over batches of labelled ``dataset``.

    ``model`` is a task head (its forward returns ``.loss`` for a batch with labels). Returns
    one (N_l,) tensor per layer (N_l: the layer's current heads), each scaled to unit L2 norm.
    The model's parameters get no gradients and are left as they were.
    """
    layers = _encoder_layers(model)
    device = next(model.parameters()).device
    gates = [torch.ones(layer.attention.num_heads, device=device, requires_grad=True)
             for layer in layers]                                             # L of (N_l,)
    importance = [torch.zeros(g.shape, device=device) for g in gates]

    def gate_hook(gate: torch.Tensor, head_dim: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            # (B, T, N*D) on the padded path, (real tokens, N*D) on the unpadded one
            context = args[0]                                                 # (..., N*D)
            heads = context.view(*context.shape[:-1], -1, head_dim)           # (..., N, D)
            return ((heads * gate[:, None]).view(context.shape),)             # (..., N*D)
        return hook

    handles = [layer.attention_output.register_forward_pre_hook(
        gate_hook(gate, layer.attention.head_dim)) for layer, gate in zip(layers, gates)]
    trainable = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()  # no dropout: the gradient is that of the model as it predicts
    for p in model.parameters():
        p.requires_grad_(False)  # only the gates need gradients
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            if loss is None:
                raise ValueError("head importance needs labelled data: the model returned no loss")
            loss.backward()
            for total, gate in zip(importance, gates):
                total += gate.grad.abs()
                gate.grad = None
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
        model.train(was_training)
    return [imp / (imp.norm() + 1e-20) for imp in importance]


def select_heads(importance: list[torch.Tensor], fraction: float,
                 config: BertConfig) -> dict[int, list[int]]:
    """The ``fraction`` least important heads of all layers, never a layer's last head.

    ``importance`` is :func:`head_importance`'s (by current head position); the result names
    heads by their original index ({layer: [heads]}), as ``config.pruned_heads`` does.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the fraction of heads to prune must be in (0, 1), got {fraction}")
    total = sum(len(imp) for imp in importance)
    count = round(fraction * total)
    if count == 0:
        raise ValueError(f"pruning {fraction} of {total} heads removes none; use a larger fraction")
    left = [len(imp) for imp in importance]
    ranked = sorted((float(v), layer, pos) for layer, imp in enumerate(importance)
                    for pos, v in enumerate(imp.tolist()))
    chosen: dict[int, list[int]] = {}
    for _, layer, pos in ranked:
        if count == 0:
            break
        if left[layer] == 1:  # a layer without heads would be a layer without attention
            continue
        chosen.setdefault(layer, []).append(config.kept_heads(layer)[pos])
        left[layer] -= 1
        count -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def prune_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Remove attention heads in place: ``heads`` is {layer: [original head index]} (heads
    already pruned may be named again). Updates ``model.config.pruned_heads``; saving the model
    writes zero-padded full-size tensors (see :mod:`bertkit.checkpoint`)."""
    config: BertConfig = model.config
    layers = _encoder_layers(model)
    pruned = {layer: set(h) for layer, h in (config.pruned_heads or {}).items()}
    for layer, remove in heads.items():
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} does not exist (the model has {len(layers)})")
        kept = config.kept_heads(layer)                     # original ids, in position order
        staying = [pos for pos, head in enumerate(kept) if head not in set(remove)]
        if not staying:
            raise ValueError(f"pruning heads {sorted(remove)} would leave layer {layer} without "
                             "attention heads; keep at least one")
        layers[layer].keep_heads(staying)
        pruned[layer] = pruned.get(layer, set()) | (set(kept) & set(remove))
    config.pruned_heads = {layer: sorted(h) for layer, h in sorted(pruned.items()) if h}
    config.__post_init__()  # normalise and validate


# ============================================================================ magnitude pruning


def encoder_matrices(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's Linear layers that magnitude pruning touches, by name (``layers.0.ffn.up``)."""
    out = {}
    for i, layer in enumerate(_encoder_layers(model)):
        for name in ENCODER_MATRICES:
            module = layer.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"layers.{i}.{name} is a {type(module).__name__}, not a Linear "
                                 "(a PEFT or quantised model?): prune the plain model")
            out[f"layers.{i}.{name}"] = module
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, Any]:
    """Zero the ``sparsity`` fraction of smallest-|w| encoder Linear weights (biases kept).

    ``scope``: "global" ranks all encoder matrices together (layers that matter less lose
    more); "layer" prunes each encoder layer's matrices to the same sparsity. Returns
    :func:`sparsity_report` of the pruned model.
    """
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    matrices = encoder_matrices(model)
    if scope == "global":
        groups = [list(matrices.values())]
    else:
        groups = [[m for name, m in matrices.items() if name.startswith(f"layers.{i}.")]
                  for i in range(len(_encoder_layers(model)))]
    for group in groups:
        flat = torch.cat([m.weight.abs().flatten() for m in group])          # (n,)
        count = round(sparsity * flat.numel())
        # Exactly `count` zeros: the positions of the smallest values, ties broken by order.
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[torch.argsort(flat, stable=True)[:count]] = True
        start = 0
        for m in group:
            n = m.weight.numel()
            m.weight.masked_fill_(drop[start:start + n].view_as(m.weight), 0.0)
            start += n
    return sparsity_report(model)


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Zero weights of the encoder matrices per layer and in total, and of all parameters."""
    layers: dict[str, dict[str, float]] = {}
    zeros = total = 0
    for name, module in encoder_matrices(model).items():
        layer = name.split(".")[1]
        entry = layers.setdefault(layer, {"zeros": 0, "weights": 0})
        z, n = int((module.weight == 0).sum()), module.weight.numel()
        entry["zeros"] += z
        entry["weights"] += n
        zeros, total = zeros + z, total + n
    for entry in layers.values():
        entry["sparsity"] = entry["zeros"] / entry["weights"]
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    return {"layers": layers, "encoder_zeros": zeros, "encoder_weights": total,
            "encoder_sparsity": zeros / total, "model_sparsity": all_zeros / all_params}


def print_sparsity(report: dict[str, Any]) -> None:
    print("layer   zero weights / encoder Linear weights   sparsity")
    for layer, entry in report["layers"].items():
        print(f"{layer:>5}   {entry['zeros']:>12,} / {entry['weights']:<12,}          "
              f"{entry['sparsity']:.3f}")
    print(f"total   {report['encoder_zeros']:>12,} / {report['encoder_weights']:<12,}          "
          f"{report['encoder_sparsity']:.3f}  (all parameters: {report['model_sparsity']:.3f})")


# ============================================================================ measurements


def folder_size(folder: str) -> int:
    """Bytes of a folder's weight files (``model.safetensors`` or ``pytorch_model.bin``)."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for name in ("model.safetensors", "pytorch_model.bin")
               if os.path.isfile(os.path.join(folder, name)))


def compare_speed(models: dict[str, nn.Module], task: str, dataset, collator,
                  batch_size: int = 32, repeats: int = 3) -> dict[str, float]:
    """Inference tokens/s of each model over ``dataset`` (real tokens, length-sorted batches,
    as `bertkit evaluate` runs). The models take turns and each keeps its best pass, so a
    machine busy with other work penalises none of them more than the others. ``task`` is
    the task's name (:data:`bertkit.tasks.TASKS`)."""
    task = get_task(task)
    tokens = sum(len(item["input_ids"]) for item in dataset)
    best = {name: float("inf") for name in models}
    for name, model in models.items():  # warm-up: allocations, kernel choice
        forward_items(model, task, torch.utils.data.Subset(dataset, range(min(8, len(dataset)))),
                      collator, batch_size)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            forward_items(model, task, dataset, collator, batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: tokens / seconds for name, seconds in best.items()}


# ============================================================================ the command


def _labelled_split(folder: str, data: str):
    """(model, task name, dataset with labels, collator) of a fine-tuned folder and a data
    file."""
    opened = open_task_folder(folder, None)
    split = load_split(opened.task, data, opened.tokenizer, opened.settings, opened.label2id)
    return (opened.model, opened.task.name, split.dataset,
            PaddingCollator(opened.tokenizer.pad_token_id))


def run_pruning(model_dir: str, out_dir: str, heads: float | None = None,
                sparsity: float | None = None, data: str | None = None, scope: str = "global",
                batch_size: int = 16, overwrite: bool = False) -> dict[str, Any]:
    """Prune ``model_dir`` into ``out_dir``: ``heads`` (a fraction of the attention heads, by
    importance on ``data``) or ``sparsity`` (a fraction of the encoder weights, by magnitude).

    With ``data`` (a labelled file of the folder's task) the model is evaluated on it before
    and after (the pruned folder as written, reloaded); head pruning also times both. Writes
    the model, the tokenizer files and ``prune.json``; prints the report; returns it.
    ``out_dir`` is written as a whole at the end (:func:`bertkit.outputs.output_folder`): an
    existing folder is refused unless ``overwrite``, and a failure leaves it as it was.
    """
    if (heads is None) == (sparsity is None):
        raise ValueError("give exactly one of heads (a fraction of attention heads) or sparsity "
                         "(a fraction of encoder weights)")
    if heads is not None and not 0 < heads < 1:
        raise ValueError(f"--heads is the fraction of attention heads to prune and must be in "
                         f"(0, 1), got {heads}")
    if sparsity is not None and not 0 < sparsity < 1:
        raise ValueError(f"--sparsity is the fraction of encoder weights to zero and must be in "
                         f"(0, 1), got {sparsity}")
    if heads is not None and data is None:
        raise ValueError("head pruning ranks heads by their importance on labelled data: give "
                         "--data F (a file of the folder's task, e.g. its dev set)")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if is_adapter_folder(model_dir):
        raise ValueError(f"{model_dir} is a PEFT adapter folder; merge it into a full model "
                         "first (bertkit merge-lora) and prune that")
    with output_folder(out_dir, inputs={"--model": model_dir, "--data": data},
                       overwrite=overwrite) as staging:
        report = _prune_into(model_dir, str(staging), heads, sparsity, data, scope, batch_size)
    print(f"pruned folder: {out_dir} ({REPORT_FILE})")
    return report


def _prune_into(model_dir: str, out_dir: str, heads: float | None, sparsity: float | None,
                data: str | None, scope: str, batch_size: int) -> dict[str, Any]:
    """The work of :func:`run_pruning`, writing into ``out_dir``."""
    report: dict[str, Any] = {"model": model_dir, "data": data}
    task = None
    if data is not None:
        model, task, dataset, collator = _labelled_split(model_dir, data)
        report["task"] = task
        report["before"] = {k: v for k, v in evaluate_folder(model_dir, data).items()
                            if isinstance(v, float)}
    else:
        config = BertConfig.from_pretrained(model_dir)
        names = [a for a in (config.architectures or []) if a in HEAD_CLASSES]
        model = HEAD_CLASSES[names[0] if names else "BertModel"].from_pretrained(model_dir,
                                                                               verbose=False)
    before_params = model.num_parameters()

    if heads is not None:
        importance = head_importance(model, dataset, collator, batch_size)
        chosen = select_heads(importance, heads, model.config)
        original = copy.deepcopy(model)  # the unpruned model, for the speed comparison
        prune_heads(model, chosen)
        report["heads"] = {"fraction": heads, "pruned_now": {str(k): v for k, v in chosen.items()},
                           "pruned_heads": {str(k): v for k, v in model.config.pruned_heads.items()},
                           "importance": [[round(float(x), 4) for x in imp] for imp in importance]}
        n_now = sum(len(v) for v in chosen.values())
        n_total = sum(len(imp) for imp in importance)
        print(f"pruned {n_now} of {n_total} attention heads (lowest importance on {data}):")
        for layer, hs in chosen.items():
            print(f"  layer {layer}: heads {hs}  (keeps {len(model.config.kept_heads(layer))} of "
                  f"{model.config.num_attention_heads})")
    else:
        report["magnitude"] = magnitude_prune(model, sparsity, scope)
        report["magnitude"].update(target=sparsity, scope=scope)
        print(f"magnitude pruning ({scope}) to {sparsity:.0%} of the encoder Linear weights:")
        print_sparsity(report["magnitude"])

    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copy(os.path.join(model_dir, name), os.path.join(out_dir, name))
    report["parameters"] = {"before": before_params, "after": model.num_parameters()}
    report["bytes_on_disk"] = {"before": folder_size(model_dir), "after": folder_size(out_dir)}
    print(f"parameters: {before_params:,} -> {model.num_parameters():,} (bertkit in memory); "
          f"weights on disk {report['bytes_on_disk']['before'] / 1e6:.1f} MB -> "
          f"{report['bytes_on_disk']['after'] / 1e6:.1f} MB (pruned weights are stored as zeros)")

    if data is not None:
        report["after"] = {k: v for k, v in evaluate_folder(out_dir, data).items()
                           if isinstance(v, float)}
        print(f"{os.path.basename(data)} before: {headline(task, report['before'])}")
        print(f"{os.path.basename(data)} after:  {headline(task, report['after'])}")
        if heads is not None:
            speed = compare_speed({"before": original, "after": model.eval()}, task, dataset,
                                  collator)
            report["tokens_per_s"] = speed
            print(f"inference speed on {os.path.basename(data)}: {speed['before']:,.0f} -> "
                  f"{speed['after']:,.0f} tokens/s ({speed['after'] / speed['before']:.2f}x)")
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report
