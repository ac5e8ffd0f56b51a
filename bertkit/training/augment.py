"""Data augmentation of text-classification examples: new training texts that keep the label.

Methods (each makes ``n`` new examples per original; the originals are kept):

- ``eda``: Wei & Zou (2019), "EDA: Easy Data Augmentation Techniques". Each new text gets one
  operation drawn at random: random swap of two words, random deletion (each word with
  probability ``alpha``), and, when WordNet is available, synonym replacement and random
  insertion of a synonym; ``alpha`` is the share of words changed.
- ``synonym``: synonym replacement only, from WordNet (Debian's ``wordnet-base`` package:
  ``/usr/share/wordnet``; ``--wordnet DIR`` for another copy). Without WordNet: a ValueError.
- ``mlm``: contextual replacement (Kobayashi, 2018; Wu et al., 2019): ``alpha`` of the words
  are masked and each replaced by a whole word drawn from a BERT MLM folder's top-k.
- ``backtranslate``: Sennrich et al. (2016) / Xie et al. (2020): through two translation
  folders written by ``bertkit finetune --task translation`` (to a pivot language and back),
  sampling-free (beam search), so a text's paraphrase is the round trip.

Only the training split is ever augmented (``finetune --augment`` applies it after the splits
are read; dev and test are never touched). Pairs (NLI-style) are refused: changing one side's
words can change the relation the label names.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bertkit.data.tasks import ClassificationExample, load_classification, write_classification
from bertkit.inference import fill_mask, load_for_inference
from bertkit.outputs import output_file
from bertkit.training.translation import translate_folder

METHODS = ("eda", "synonym", "mlm", "backtranslate")
WORDNET_DIR = "/usr/share/wordnet"   # Debian's wordnet-base
_WORD = re.compile(r"^[A-Za-z]+$")     # words a replacement may take the place of


# ============================================================================ WordNet


class WordNet:
    """Synonyms from the WordNet database files (``index.<pos>`` and ``data.<pos>``).

    Only what synonym lookup needs is read: ``index.<pos>`` maps a lemma to its synsets'
    byte offsets in ``data.<pos>``, and each synset line lists its words (WordNet 3.0 format,
    ``wndb(5WN)``)."""

    POS = ("noun", "verb", "adj", "adv")

    def __init__(self, folder: str = WORDNET_DIR):
        missing = [f"index.{p}" for p in self.POS if not os.path.isfile(f"{folder}/index.{p}")]
        if missing:
            raise ValueError(f"no WordNet database in {folder} (missing {', '.join(missing)}); "
                             "install Debian's wordnet-base package or pass --wordnet DIR")
        self.folder = folder
        self._offsets: dict[str, list[tuple[str, int]]] = {}
        self._synonyms: dict[str, list[str]] = {}
        for pos in self.POS:
            with open(f"{folder}/index.{pos}", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith(" "):          # the license header
                        continue
                    fields = line.split()
                    synset_count, pointer_count = int(fields[2]), int(fields[3])
                    offsets = fields[6 + pointer_count:6 + pointer_count + synset_count]
                    self._offsets.setdefault(fields[0], []).extend(
                        (pos, int(o)) for o in offsets)

    def synonyms(self, word: str) -> list[str]:
        """One-word synonyms of ``word`` (lowercase, sorted, ``word`` itself left out); none
        for a stop word, as in EDA: WordNet's senses of "a", "us" or "will" (ampere, America,
        volition) are not what a sentence means by them."""
        word = word.lower()
        if word in _stop_words():
            return []
        if word not in self._synonyms:  # each word's synsets are read from disk once
            self._synonyms[word] = self._read_synonyms(word)
        return self._synonyms[word]

    def _read_synonyms(self, word: str) -> list[str]:
        found = set()
        for pos, offset in self._offsets.get(word.lower(), []):
            with open(f"{self.folder}/data.{pos}", "rb") as f:
                f.seek(offset)
                fields = f.readline().decode("utf-8", "replace").split()
            count = int(fields[3], 16)
            found.update(fields[4 + 2 * i].lower() for i in range(count))
        found.discard(word.lower())
        return sorted(w for w in found if _WORD.match(w))


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    # scikit-learn's English list; imported here because the module takes a second to load.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


# ============================================================================ EDA


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """``words`` with ``n`` random pairs of positions swapped."""
    words = list(words)
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Each word dropped with probability ``p``; at least one word is kept."""
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def synonym_replacement(words: list[str], n: int, rng: random.Random,
                        wordnet: WordNet) -> list[str]:
    """Up to ``n`` words that have synonyms replaced by one of them."""
    words = list(words)
    candidates = [i for i, w in enumerate(words) if _WORD.match(w)]
    rng.shuffle(candidates)
    replaced = 0
    for i in candidates:
        synonyms = wordnet.synonyms(words[i])
        if synonyms:
            words[i] = rng.choice(synonyms)
            replaced += 1
            if replaced == n:
                break
    return words


def random_insertion(words: list[str], n: int, rng: random.Random,
                     wordnet: WordNet) -> list[str]:
    """A synonym of a random word inserted at a random position, ``n`` times (fewer when
    no word has a synonym)."""
    words = list(words)
    for _ in range(n):
        options = [s for w in rng.sample(words, min(len(words), 10)) if _WORD.match(w)
                   for s in wordnet.synonyms(w)]
        if not options:
            break
        words.insert(rng.randrange(len(words) + 1), rng.choice(options))
    return words


def eda(text: str, alpha: float, rng: random.Random, wordnet: WordNet | None,
        only: str | None = None) -> str:
    """One EDA variant of ``text`` (module docstring); ``only="synonym"`` restricts it to
    synonym replacement."""
    words = text.split()
    if not words:
        return text
    n = max(1, round(alpha * len(words)))
    operations: list[Callable[[], list[str]]] = []
    if only != "synonym":
        operations += [lambda: random_swap(words, n, rng),
                       lambda: random_deletion(words, alpha, rng)]
    if wordnet is not None:
        operations.append(lambda: synonym_replacement(words, n, rng, wordnet))
        if only != "synonym":
            operations.append(lambda: random_insertion(words, n, rng, wordnet))
    return " ".join(rng.choice(operations)())


# ============================================================================ MLM, round trip


def mlm_replacement(texts: Sequence[str], model_dir: str, alpha: float, top_k: int,
                    rng: random.Random) -> list[str]:
    """Each text with ``alpha`` of its words replaced by whole words sampled from the MLM's
    ``top_k`` at that position (the original word and word pieces left out)."""
    model, tokenizer = load_for_inference(model_dir, device="cpu")
    if not hasattr(model, "mlm"):
        raise ValueError(f"{model_dir} has no masked-language-model head (it is a "
                         f"{type(model).__name__}); --method mlm needs a folder written by "
                         "`bertkit pretrain` or a BertForMaskedLM folder")
    new_texts = []
    for text in texts:
        words = text.split()
        positions = [i for i, w in enumerate(words) if _WORD.match(w)]
        chosen = sorted(rng.sample(positions, min(len(positions),
                                                  max(1, round(alpha * len(words))))))
        if not chosen:
            new_texts.append(text)
            continue
        masked = [tokenizer.mask_token if i in chosen else w for i, w in enumerate(words)]
        filled = fill_mask(model, tokenizer, " ".join(masked), top_k=top_k)
        for i, candidates in zip(chosen, filled):
            options = [c["token"] for c in candidates if _WORD.match(c["token"])
                       and c["token"].lower() != words[i].lower()]
            if options:
                words[i] = rng.choice(options)
        new_texts.append(" ".join(words))
    return new_texts


def back_translation(texts: Sequence[str], forward_dir: str, backward_dir: str) -> list[str]:
    """``texts`` translated with ``forward_dir`` and back with ``backward_dir``."""
    pivot = [r["translation"] for r in translate_folder(forward_dir, texts)]
    return [r["translation"] for r in translate_folder(backward_dir, pivot)]


# ============================================================================ the driver


@dataclass(frozen=True)
class AugmentConfig:
    """What to make: ``methods`` (names of :data:`METHODS`), ``n`` new examples per original
    and method, ``alpha`` the share of words changed, and each method's resources."""

    methods: tuple[str, ...]
    n: int = 1
    alpha: float = 0.1
    seed: int = 0
    mlm_model: str | None = None                   # mlm: a folder with an MLM head
    top_k: int = 10                                # mlm: candidates sampled from
    backtranslate: tuple[str, str] | None = None   # (to the pivot, back) translation folders
    wordnet: str | None = None                     # eda/synonym: default /usr/share/wordnet

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"augmentation methods are {', '.join(METHODS)}; got "
                             f"{', '.join(unknown) or 'none'}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"augment n must be an integer >= 1, got {self.n!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"augment alpha must be in (0, 1], got {self.alpha!r}")
        if "mlm" in self.methods and not self.mlm_model:
            raise ValueError("--method mlm needs --mlm-model DIR (a folder with an MLM head)")
        if "backtranslate" in self.methods and not self.backtranslate:
            raise ValueError("--method backtranslate needs --backtranslate TO_DIR,BACK_DIR")


def _wordnet(config: AugmentConfig) -> WordNet | None:
    """WordNet for eda (None when absent: eda then swaps and deletes only) and synonym
    (required)."""
    folder = config.wordnet or WORDNET_DIR
    if "synonym" in config.methods or config.wordnet:
        return WordNet(folder)
    return WordNet(folder) if os.path.isfile(f"{folder}/index.noun") else None


def augment_examples(examples: Sequence[ClassificationExample],
                     config: AugmentConfig) -> list[ClassificationExample]:
    """The new examples (labels kept; ``line`` the original's), ``config.n`` per original
    and method, in method order; identical copies of an original are dropped."""
    if any(ex.text_pair is not None for ex in examples):
        raise ValueError("augmentation takes single-text examples; pairs are refused (changing "
                         "one text of a pair can change the relation its label names)")
    rng = random.Random(config.seed)
    texts = [ex.text for ex in examples]
    made: list[ClassificationExample] = []
    wordnet = _wordnet(config) if {"eda", "synonym"} & set(config.methods) else None
    for method in config.methods:
        # A round trip through beam search is deterministic: one per original is all it gives.
        for _ in range(1 if method == "backtranslate" else config.n):
            if method in ("eda", "synonym"):
                new = [eda(t, config.alpha, rng, wordnet, only=method if method == "synonym"
                           else None) for t in texts]
            elif method == "mlm":
                new = mlm_replacement(texts, config.mlm_model, config.alpha, config.top_k, rng)
            else:
                new = back_translation(texts, *config.backtranslate)
            made += [replace(ex, text=t) for ex, t in zip(examples, new)
                     if t.strip() and t != ex.text]
    return made


def augment_file(in_path: str, out_path: str, config: AugmentConfig,
                 overwrite: bool = False) -> int:
    """Write ``out_path`` (``.jsonl``): the examples of the classification file ``in_path``
    followed by their augmented copies; print the count and a few samples. Returns the number
    of new examples. ``out_path`` is written whole at the end (never ``in_path``)."""
    if not out_path.endswith(".jsonl"):
        raise ValueError(f"--out {out_path} must be a .jsonl file")
    inputs = {"--in": in_path, "--mlm-model": config.mlm_model,
              **{f"--backtranslate {i + 1}": p for i, p in enumerate(config.backtranslate or ())}}
    with output_file(out_path, inputs=inputs, overwrite=overwrite) as temporary:
        examples = load_classification(in_path)
        made = augment_examples(examples, config)
        write_classification([*examples, *made], str(temporary))
    print(f"{len(examples):,} examples in {in_path}; {len(made):,} new "
          f"({', '.join(config.methods)}, {config.n} per example): {out_path}")
    original = {ex.line: ex.text for ex in examples}
    for new in random.Random(config.seed).sample(made, min(3, len(made))):
        print(f"  [{new.label}] {original[new.line]!r}\n      -> {new.text!r}")
    return len(made)
