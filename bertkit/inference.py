"""Batched inference over lists of texts: the path `bertkit embed`, `predict` and serving use.

A model's cost grows with the padded batch size (B x T), but only real tokens are useful
work. Sorting texts by length before cutting them into batches puts texts of similar length
together, so each batch pads little; results are put back into the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from bertkit.checkpoint import check_vocab_fits
from bertkit.config import BertConfig
from bertkit.modeling.bert import HEAD_CLASSES, BertModel
from bertkit.modeling.pooling import Pooling, pool, read_max_seq_length, read_pooling
from bertkit.tokenizer import Tokenizer


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices into ``lengths`` in batches of ``batch_size``, longest texts first."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.inference_mode()
def run_batched(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str],
                reduce: Callable[[object, dict], torch.Tensor],
                text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                max_length: int | None = None) -> list[torch.Tensor]:
    """Run ``model`` over ``texts`` in length-sorted batches.

    ``reduce(output, batch)`` turns one batch's model output into a (B, ...) tensor (e.g. pooled
    embeddings or logits); its rows come back as a list in the order of ``texts``. Texts longer
    than the model takes are truncated to ``max_length`` (default: the tokenizer's limit).
    """
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"texts and text_pairs must have the same length, got {len(texts)} "
                         f"and {len(text_pairs)}")
    device = next(model.parameters()).device
    lengths = [len(t) + (len(text_pairs[i]) if text_pairs is not None else 0)
               for i, t in enumerate(texts)]
    results: list[torch.Tensor | None] = [None] * len(texts)
    for indices in length_sorted_batches(lengths, batch_size):
        batch = tokenizer([texts[i] for i in indices],
                          [text_pairs[i] for i in indices] if text_pairs is not None else None,
                          max_length=max_length, truncation=True, padding=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        reduced = reduce(model(**batch), batch).float().cpu()
        for row, index in enumerate(indices):
            results[index] = reduced[row]
    return results


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                     # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: (B, T, H), (B, T) -> (B, H)."""
    return pool(hidden, attention_mask, Pooling("mean"))


def embed(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 32,
          normalize: bool = False, max_length: int | None = None,
          pooling: Pooling | None = None) -> torch.Tensor:
    """Sentence embeddings of ``texts``: (len(texts), H).

    ``pooling`` says how token vectors become the sentence vector (a folder's own, from
    :func:`load_sentence_encoder` or :func:`~bertkit.modeling.pooling.read_pooling`); None is
    the mean of the last hidden states over real tokens. ``normalize`` scales the vectors to
    unit length (also when the pooling does not). ``model`` is a :class:`~bertkit.BertModel`
    or any head (its encoder is used).
    """
    encoder = getattr(model, "bert", model)
    pooling = pooling or Pooling()

    def reduce(output, batch):
        return pool(output.last_hidden_state, batch["attention_mask"], pooling)

    if not texts:
        return torch.empty(0, encoder.config.hidden_size)
    vectors = torch.stack(run_batched(encoder, tokenizer, texts, reduce, batch_size=batch_size,
                                      max_length=max_length))
    if normalize and not pooling.normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors


def load_sentence_encoder(folder: str, device: str | None = None
                          ) -> tuple[BertModel, Tokenizer, Pooling]:
    """The encoder, tokenizer and pooling of a sentence-embedding folder, for :func:`embed`.

    A sentence-transformers folder (``modules.json``, ``1_Pooling/``; what ``bertkit finetune
    --task retrieval`` writes) gives its own pooling, normalisation and ``max_seq_length``
    (the tokenizer's limit), so the vectors are those ``SentenceTransformer(folder).encode``
    gives; any other BERT folder gives mean pooling without normalisation. A task head's
    folder loads its encoder. Returns (model in eval mode on ``device``, tokenizer, pooling).
    """
    pooling = read_pooling(folder)  # a malformed layout fails before the weights load
    max_seq_length = read_max_seq_length(folder)
    model, tokenizer = load_for_inference(folder, BertModel, device=device)
    if max_seq_length is not None:
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_seq_length)
    return model, tokenizer, pooling


def load_for_inference(folder: str, model_class: type | None = None, device: str | None = None):
    """Load the model and tokenizer of an HF folder for inference, checking they fit together.

    ``model_class`` defaults to the folder's ``architectures`` entry. Returns (model, tokenizer)
    with the model in eval mode on ``device`` (default: CUDA when available).
    """
    config = BertConfig.from_pretrained(folder)
    if model_class is None:
        names = [a for a in (config.architectures or []) if a in HEAD_CLASSES]
        model_class = HEAD_CLASSES[names[0]] if names else HEAD_CLASSES["BertModel"]
    tokenizer = load_tokenizer_for(folder, config)
    model = model_class.from_pretrained(folder, verbose=False)
    quantized = "quantization_config" in config.extra  # int8 kernels are CPU-only
    device = device or ("cuda" if torch.cuda.is_available() and not quantized else "cpu")
    return model.to(device).eval(), tokenizer


def load_tokenizer_for(folder: str, config) -> Tokenizer:
    """The folder's tokenizer, checked against the model's ``config`` by
    :func:`~bertkit.checkpoint.check_vocab_fits` (a vocab that does not match the embedding
    table is a ValueError), with texts cut to the positions the model has."""
    tokenizer = Tokenizer.from_pretrained(folder)
    check_vocab_fits(tokenizer, config, folder)
    tokenizer.model_max_length = min(tokenizer.model_max_length, config.max_tokens)
    return tokenizer


@torch.inference_mode()
def fill_mask(model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[dict]]:
    """The ``top_k`` most likely tokens (``top_k`` >= 1) for each ``[MASK]`` in ``text``.

    ``model`` must have an MLM head (BertForMaskedLM / BertForPreTraining). Returns, per mask in
    order, a list of ``{"token", "score" (probability), "sequence" (the text with that token)}``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not hasattr(model, "mlm"):
        raise ValueError(f"{type(model).__name__} has no masked-language-model head; fill-mask "
                         "needs a BertForMaskedLM or BertForPreTraining model")
    batch = tokenizer([text], truncation=True)
    ids = batch["input_ids"][0]
    positions = (ids == tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not positions:
        raise ValueError(f"the text has no {tokenizer.mask_token} token: {text!r}")
    device = next(model.parameters()).device
    hidden = getattr(model, "bert")(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state
    probs = model.mlm(hidden[0, positions]).float().softmax(-1).cpu()        # (masks, V)
    frame_ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    results = []
    for row, position in enumerate(positions):
        scores, token_ids = probs[row].topk(min(top_k, probs.size(-1)))
        candidates = []
        for score, token_id in zip(scores.tolist(), token_ids.tolist()):
            filled = ids.clone()
            filled[position] = token_id
            # Drop [CLS]/[SEP]/[PAD] but keep the text's other [MASK]s visible.
            kept = [i for i in filled.tolist() if i not in frame_ids]
            candidates.append({"token": tokenizer.convert_ids_to_tokens(token_id), "score": score,
                               "sequence": tokenizer.decode(kept, skip_special_tokens=False)})
        results.append(candidates)
    return results
