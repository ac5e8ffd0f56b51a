"""An embedding index on disk (faiss), built in resumable chunks, searched by cosine.

An index folder holds::

    index.faiss     the faiss index: IndexFlatIP (exact) or IndexHNSWFlat (approximate), inner
                    product over unit vectors, i.e. cosine similarity
    docs.jsonl      {"id", "text"} per vector, in the index's order
    index.json      what the vectors mean: the model (its real path and fingerprint, see
                    encoder.py), dimension, pooling, normalisation, count, kind, HNSW settings

Building goes through :func:`bertkit.outputs.output_folder`: the folder is written as
``INDEX.partial`` and moved into place at the end, so a failed build leaves an existing index
as it was. The corpus is embedded in chunks, each saved to ``INDEX.partial/checkpoints/`` as
it finishes; a killed build keeps that folder, and ``resume=True`` embeds only the chunks
that are missing. :func:`add_documents` writes the grown index the same way and swaps it in
as a whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from bertkit.jsonfile import json_object_line, read_json_object
from bertkit.outputs import CHECKPOINTS_DIR, check_output_folder, output_folder, partial_path
from bertkit.search.corpus import Document, corpus_lines, read_corpus
from bertkit.search.encoder import Encoder, load_encoder
from bertkit.tasks.predict import Predictor, load_predictor
from bertkit.version import __version__

INDEX_JSON = "index.json"
FAISS_FILE = "index.faiss"
DOCS_FILE = "docs.jsonl"
# Beside checkpoints/: what the chunks are made from. Not in it: output_folder keeps a failed
# run's staging folder when checkpoints/ holds something, which should mean a finished chunk.
STATE_FILE = "build-state.json"
FORMAT = "bertkit-index"
KINDS = ("flat", "hnsw")
DEFAULT_CHUNK_SIZE = 1000
# HNSW: 32 links per node and a wide construction beam: recall@10 >= 0.95 on 50k random
# 384-d vectors (benchmarks/search.py), the hard case: real embeddings cluster and do better.
HNSW_M = 32
EF_CONSTRUCTION = 200
EF_SEARCH = 128
RERANK_TASKS = ("rerank", "regression")  # folders whose predictions are {"score": float}


def _faiss():
    # faiss is imported when an index is built or opened, not whenever the CLI imports this.
    import faiss
    return faiss


# ============================================================================ index.json


@dataclass
class IndexInfo:
    """The contents of ``index.json``."""
    model_path: str          # the model folder's real path when the index was built
    model_fingerprint: str   # bertkit.search.encoder.model_fingerprint of that folder
    dimension: int
    count: int
    kind: str = "flat"
    pooling: str = "mean"    # the model's pooling mode (bertkit.modeling.pooling)
    normalize: bool = True   # vectors are unit length: inner product = cosine
    hnsw: dict | None = None  # {"m", "ef_construction", "ef_search"} for kind "hnsw"
    # The model folder relative to the index folder: an index moved together with its model
    # (e.g. a demo or run folder holding both) still finds it.
    model_relative: str | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "bertkit_version": __version__,
                "kind": self.kind, "metric": "cosine", "dimension": self.dimension,
                "count": self.count, "pooling": self.pooling, "normalize": self.normalize,
                "model": {"path": self.model_path, "relative_path": self.model_relative,
                          "fingerprint": self.model_fingerprint},
                "hnsw": self.hnsw, "files": {"index": FAISS_FILE, "documents": DOCS_FILE}}


def _field(data: dict, name: str, kind: type, where: str, what: str):
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {name!r} must be {what}, got {str(value)[:60]!r}")
    return value


def read_index_info(index_dir: str | os.PathLike) -> IndexInfo:
    """The checked ``index.json`` of ``index_dir``; a folder that is not an index, or a
    malformed file, is one clear error naming it."""
    index_dir = os.fspath(index_dir)
    if not os.path.isdir(index_dir):
        raise FileNotFoundError(f"index {index_dir} does not exist (build one with "
                                "`bertkit index`)")
    path = os.path.join(index_dir, INDEX_JSON)
    if not os.path.isfile(path):
        raise ValueError(f"{index_dir} is not a bertkit index: it has no {INDEX_JSON} (build "
                         "one with `bertkit index --model DIR --corpus FILE --out INDEX`)")
    data = read_json_object(path)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}; this is not a bertkit index")
    model = _field(data, "model", dict, path, "an object {path, fingerprint}")
    info = IndexInfo(model_path=_field(model, "path", str, path + " model", "a string"),
                     model_fingerprint=_field(model, "fingerprint", str, path + " model",
                                              "a string"),
                     dimension=_field(data, "dimension", int, path, "a positive integer"),
                     count=_field(data, "count", int, path, "a whole number"),
                     kind=_field(data, "kind", str, path, "'flat' or 'hnsw'"),
                     pooling=_field(data, "pooling", str, path, "a string"),
                     normalize=_field(data, "normalize", bool, path, "true or false"),
                     hnsw=data.get("hnsw"),
                     model_relative=model.get("relative_path")
                     if isinstance(model.get("relative_path"), str) else None)
    if info.dimension < 1 or info.count < 0 or info.kind not in KINDS:
        raise ValueError(f"{path}: dimension must be >= 1, count >= 0 and kind 'flat' or "
                         f"'hnsw' (got {info.dimension}, {info.count}, {info.kind!r})")
    if info.kind == "hnsw" and not (isinstance(info.hnsw, dict)
                                    and isinstance(info.hnsw.get("ef_search"), int)):
        raise ValueError(f"{path}: field 'hnsw' must be an object with an integer 'ef_search'")
    return info


# ============================================================================ building


@dataclass
class IndexSummary:
    """What :func:`build_index` / :func:`add_documents` did."""
    out: str
    count: int            # documents in the index now
    added: int            # documents embedded by this call (resumed chunks included)
    resumed_chunks: int   # chunks a resumed run found finished
    dimension: int
    kind: str
    seconds: float

    def line(self) -> str:
        resumed = f" ({self.resumed_chunks} chunk(s) kept from the interrupted run)" \
            if self.resumed_chunks else ""
        return (f"indexed {self.added} document(s){resumed}: {self.out} holds {self.count} "
                f"{self.dimension}-dimensional vectors ({self.kind}) [{self.seconds:.1f} s]")


def _check_sizes(chunk_size: int, batch_size: int) -> None:
    for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def _resume_path(out: str, resume: bool | str | os.PathLike) -> str | None:
    """The staging folder to continue, or None. ``resume`` may be True or that folder's path
    (what the interrupted run printed: OUT.partial) or OUT itself."""
    if not resume:
        return None
    staging = partial_path(out)
    if resume is True or os.path.realpath(os.fspath(resume)) in (str(staging),
                                                                 os.path.realpath(out)):
        return str(staging)
    raise ValueError(f"--resume {resume} is not the unfinished build of {out}; that is "
                     f"{staging}")


def new_faiss_index(dimension: int, hnsw: bool, m: int = HNSW_M,
                    ef_construction: int = EF_CONSTRUCTION):
    """An empty faiss index for unit vectors compared by inner product (= cosine)."""
    faiss = _faiss()
    if not hnsw:
        return faiss.IndexFlatIP(dimension)
    index = faiss.IndexHNSWFlat(dimension, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def embed_in_chunks(staging: str | os.PathLike, documents: Sequence[Document], encoder: Encoder,
                    source: dict, chunk_size: int, batch_size: int,
                    progress: bool = True) -> tuple[np.ndarray, int]:
    """Embed ``documents`` chunk by chunk, each saved to ``staging/checkpoints/`` when done,
    and return all the vectors (N, D) and how many chunks were already there.

    ``source`` describes what the chunks are made from (model, corpus, chunk size); chunks a
    different source left are refused, never mixed in.
    """
    folder = os.path.join(os.fspath(staging), CHECKPOINTS_DIR)
    os.makedirs(folder, exist_ok=True)
    state_path = os.path.join(os.fspath(staging), STATE_FILE)
    if os.path.isfile(state_path):
        state = read_json_object(state_path)
        if state != source:
            changed = [k for k in source if state.get(k) != source[k]]
            raise ValueError(f"{staging} holds chunks of another build (its {', '.join(changed)} "
                             "differ): resume with the same model, corpus and chunk size, or "
                             "delete it to start again")
    else:
        _write_json(state_path, source)
    starts = range(0, len(documents), chunk_size)
    parts, resumed = [], 0
    with tqdm(total=len(documents), unit="doc", desc="embedding", disable=not progress) as bar:
        for number, start in enumerate(starts):
            path = os.path.join(folder, f"chunk-{number:06d}.npy")
            if os.path.isfile(path):
                parts.append(np.load(path))
                resumed += 1
            else:
                texts = [d.text for d in documents[start:start + chunk_size]]
                parts.append(encoder.encode(texts, batch_size=batch_size))
                temporary = path + ".tmp.npy"  # a chunk file exists only once it is whole
                np.save(temporary, parts[-1])
                os.replace(temporary, path)
            bar.update(len(parts[-1]))
    return np.concatenate(parts), resumed


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _corpus_source(encoder: Encoder, corpus_path: str, documents: Sequence[Document],
                   chunk_size: int, start: int) -> dict:
    """What a set of chunks is made from (compared when a build resumes)."""
    stat = os.stat(corpus_path)
    return {"model": encoder.fingerprint, "corpus": os.path.realpath(corpus_path),
            "corpus size": stat.st_size, "corpus modification time": stat.st_mtime_ns,
            "documents": len(documents), "chunk size": chunk_size, "first position": start}


def _write_documents(path: str, documents: Sequence[Document], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as f:
        for d in documents:
            f.write(json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n")


def _finish(staging: str, index, info: IndexInfo) -> None:
    """Write the faiss index and index.json into ``staging``; drop the chunks."""
    _faiss().write_index(index, os.path.join(staging, FAISS_FILE))
    _write_json(os.path.join(staging, INDEX_JSON), info.to_json())
    shutil.rmtree(os.path.join(staging, CHECKPOINTS_DIR), ignore_errors=True)
    os.remove(os.path.join(staging, STATE_FILE))


def build_index(model_dir: str, corpus_path: str, out: str, *, hnsw: bool = False,
                chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 32,
                overwrite: bool = False, resume: bool | str = False, progress: bool = True,
                device: str | None = None, hnsw_m: int = HNSW_M,
                ef_construction: int = EF_CONSTRUCTION,
                ef_search: int = EF_SEARCH) -> IndexSummary:
    """Embed the corpus ``corpus_path`` (.txt / .jsonl) with ``model_dir`` into the index
    folder ``out``.

    ``hnsw``: an approximate HNSW graph (large corpora) instead of exact flat search.
    ``chunk_size`` documents are embedded and saved at a time: a killed build continues with
    ``resume=True`` (or the ``OUT.partial`` path it printed) from its last finished chunk. An
    existing ``out`` is refused unless ``overwrite`` (it is then replaced at the end, as a
    whole); :func:`add_documents` appends to an index instead.
    """
    _check_sizes(chunk_size, batch_size)
    for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                        ("ef_search", ef_search)):
        check_top_k(value, name)
    started = time.perf_counter()
    inputs = {"--model": model_dir, "--corpus": corpus_path}
    resume_from = _resume_path(out, resume)
    # Refuse a bad --out before reading anything large or loading the model.
    check_output_folder(out, inputs=inputs, overwrite=overwrite, resume=resume_from,
                        resumable=True)
    documents = read_corpus(corpus_path)
    encoder = load_encoder(model_dir, device=device)
    source = _corpus_source(encoder, corpus_path, documents, chunk_size, start=0)
    with output_folder(out, inputs=inputs, overwrite=overwrite, resume=resume_from,
                       resumable=True) as staging:
        vectors, resumed = embed_in_chunks(staging, documents, encoder, source, chunk_size,
                                           batch_size, progress)
        index = new_faiss_index(vectors.shape[1], hnsw, hnsw_m, ef_construction)
        index.add(vectors)
        settings = {"m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        info = IndexInfo(model_path=os.path.realpath(model_dir),
                         model_fingerprint=encoder.fingerprint, dimension=int(vectors.shape[1]),
                         count=len(documents), kind="hnsw" if hnsw else "flat",
                         pooling=encoder.pooling.mode, hnsw=settings if hnsw else None,
                         model_relative=os.path.relpath(os.path.realpath(model_dir),
                                                        os.path.realpath(out)))
        _write_documents(os.path.join(staging, DOCS_FILE), documents)
        _finish(str(staging), index, info)
    return IndexSummary(str(out), info.count, len(documents), resumed, info.dimension, info.kind,
                        time.perf_counter() - started)


def add_documents(index_dir: str, corpus_path: str, *, model_dir: str | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 32,
                  resume: bool | str = False, progress: bool = True,
                  device: str | None = None) -> IndexSummary:
    """Append the documents of ``corpus_path`` to the index ``index_dir``, embedded with the
    index's own model (``model_dir``: that model at another path; another model is refused).

    The grown index is written beside the old one (``INDEX.partial``) and swapped in as a
    whole: a failure leaves ``index_dir`` as it was. Ids may not repeat ids in the index.
    """
    _check_sizes(chunk_size, batch_size)
    started = time.perf_counter()
    current = SearchIndex.load(index_dir, model_dir=model_dir, device=device)
    encoder, info = current.encoder, current.info
    inputs = {"--model": encoder.folder, "--corpus": corpus_path}
    resume_from = _resume_path(index_dir, resume)
    check_output_folder(index_dir, inputs=inputs, resume=resume_from,
                        replaceable_marker=INDEX_JSON, resumable=True)
    documents = read_corpus(corpus_path, start_id=info.count,
                            taken_ids={d["id"] for d in current.documents})
    source = _corpus_source(encoder, corpus_path, documents, chunk_size, start=info.count)
    with output_folder(index_dir, inputs=inputs, resume=resume_from,
                       replaceable_marker=INDEX_JSON, resumable=True) as staging:
        vectors, resumed = embed_in_chunks(staging, documents, encoder, source, chunk_size,
                                           batch_size, progress)
        current.index.add(vectors)
        info = dataclasses.replace(info, count=info.count + len(documents))
        shutil.copyfile(os.path.join(index_dir, DOCS_FILE), os.path.join(staging, DOCS_FILE))
        _write_documents(os.path.join(staging, DOCS_FILE), documents, mode="a")
        _finish(str(staging), current.index, info)
    return IndexSummary(str(index_dir), info.count, len(documents), resumed, info.dimension,
                        info.kind, time.perf_counter() - started)


# ============================================================================ searching


def _read_documents(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ValueError(f"{os.path.dirname(path)} is not a whole index: {DOCS_FILE} is missing")
    documents = []
    for number, line in enumerate(corpus_lines(path), start=1):
        record = json_object_line(line, path, number)
        if not isinstance(record.get("id"), str) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: expected {{\"id\": str, \"text\": str}}")
        documents.append(record)
    return documents


def check_top_k(top_k, name: str = "top_k") -> int:
    """``top_k`` checked to be an integer >= 1 (a ValueError naming ``name`` otherwise)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {top_k!r}")
    return top_k


class SearchIndex:
    """An index folder opened for searching: the faiss index, the documents, and the encoder
    (the model the index was built with) for the queries. Open one with :meth:`load`."""

    def __init__(self, folder: str, info: IndexInfo, index, documents: list[dict],
                 encoder: Encoder, reranker: Predictor | None = None):
        self.folder, self.info, self.index, self.documents = folder, info, index, documents
        self.encoder, self.reranker = encoder, reranker

    def __len__(self) -> int:
        return len(self.documents)

    @classmethod
    def load(cls, index_dir: str, *, model_dir: str | None = None,
             rerank_model: str | None = None, device: str | None = None,
             ef_search: int | None = None) -> "SearchIndex":
        """Open ``index_dir``. The queries are embedded by the model the index was built with:
        the folder named in index.json, or ``model_dir`` (the same model at another path). A
        model that is not that one -- another dimension, other weights, vocabulary or config --
        is refused with one line. ``rerank_model``: a cross-encoder folder (task ``rerank``)
        that re-scores each (query, document) of the top hits. ``ef_search``: an HNSW index's
        search beam instead of the one it was built with (wider: higher recall, slower)."""
        info = read_index_info(index_dir)
        faiss_path = os.path.join(index_dir, FAISS_FILE)
        if not os.path.isfile(faiss_path):
            raise ValueError(f"{index_dir} is not a whole index: {FAISS_FILE} is missing")
        index = _faiss().read_index(faiss_path)
        documents = _read_documents(os.path.join(index_dir, DOCS_FILE))
        if not index.d == info.dimension or not index.ntotal == info.count == len(documents):
            raise ValueError(f"{index_dir} is inconsistent: {INDEX_JSON} says {info.count} "
                             f"vectors of dimension {info.dimension}, {FAISS_FILE} holds "
                             f"{index.ntotal} of dimension {index.d}, {DOCS_FILE} "
                             f"{len(documents)} documents; rebuild it")
        if ef_search is not None:
            check_top_k(ef_search, "ef_search")
        if info.kind == "hnsw":
            index.hnsw.efSearch = ef_search or info.hnsw["ef_search"]
        encoder = _index_encoder(index_dir, info, model_dir, device)
        reranker = load_reranker(rerank_model, device) if rerank_model else None
        return cls(os.fspath(index_dir), info, index, documents, encoder, reranker)

    def search(self, queries: str | Sequence[str], top_k: int = 10, *,
               rerank: bool | None = None, candidates: int | None = None,
               batch_size: int = 32) -> list[list[dict]]:
        """The ``top_k`` documents nearest each query, best first: per query a list of
        ``{"id", "text", "score" (cosine), "rank" (1-based)}`` (fewer when the index holds
        fewer documents). A single string is one query (the answer is still a list per query).

        With a reranker (``rerank`` None: when one is loaded), the first ``candidates``
        (default ``top_k``) hits are re-scored by the cross-encoder and reordered by its
        score: ``score`` is then the cross-encoder's and ``retrieval_score`` the cosine.
        """
        check_top_k(top_k)
        queries = [queries] if isinstance(queries, str) else list(queries)
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"query {i} is empty or not a string: {query!r}")
        rerank = self.reranker is not None if rerank is None else rerank
        if rerank and self.reranker is None:
            raise ValueError("rerank needs a cross-encoder: load the index with rerank_model=DIR")
        depth = top_k if candidates is None else max(top_k, check_top_k(candidates, "candidates"))
        hits = self.nearest(self.encoder.encode(queries, batch_size), depth if rerank else top_k)
        if rerank:
            hits = rerank_hits(self.reranker, queries, hits, batch_size)
        return [[{**hit, "rank": rank} for rank, hit in enumerate(found[:top_k], start=1)]
                for found in hits]

    def nearest(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        """The ``top_k`` documents nearest each row of ``vectors`` (unit vectors), best first."""
        scores, positions = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                              min(top_k, max(1, len(self.documents))))
        return [[{"id": self.documents[p]["id"], "text": self.documents[p]["text"],
                  "score": float(s)} for s, p in zip(row_scores, row) if p >= 0]
                for row_scores, row in zip(scores, positions)]


def _index_encoder(index_dir: str, info: IndexInfo, model_dir: str | None,
                   device: str | None) -> Encoder:
    """The index's model, loaded and checked to be the one the vectors came from."""
    folder = model_dir or info.model_path
    beside = (os.path.normpath(os.path.join(index_dir, info.model_relative))
              if info.model_relative else None)
    if model_dir is None and not os.path.isdir(folder) and beside and os.path.isdir(beside):
        folder = beside  # the index and its model were moved together
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"index {index_dir} was built with model {info.model_path}, "
                                "which does not exist any more: pass --model with that model's "
                                "folder")
    encoder = load_encoder(folder, device=device)
    if encoder.dimension != info.dimension:
        raise ValueError(f"index {index_dir} holds {info.dimension}-dimensional vectors and "
                         f"model {folder} makes {encoder.dimension}-dimensional ones: search "
                         f"with the model the index was built with ({info.model_path})")
    if encoder.fingerprint != info.model_fingerprint:
        raise ValueError(f"index {index_dir} was built with another model than {folder} "
                         f"(fingerprint {info.model_fingerprint[:12]}, this folder "
                         f"{encoder.fingerprint[:12]}): search with the model it was built "
                         f"with ({info.model_path}), or rebuild the index")
    return encoder


def load_reranker(folder: str, device: str | None = None) -> Predictor:
    """A cross-encoder folder loaded to score (query, document) pairs: a folder whose task
    predicts a relevance ``score`` for a text pair (``rerank``; ``regression`` also fits)."""
    predictor = load_predictor(folder, device=device)
    if predictor.task.name not in RERANK_TASKS:
        raise ValueError(f"--rerank {folder} is a {predictor.task.name} folder; reranking needs "
                         "a cross-encoder that scores a (query, document) pair: a folder from "
                         "`bertkit finetune --task rerank`")
    return predictor


def rerank_hits(reranker: Predictor, queries: Sequence[str], hits: list[list[dict]],
                batch_size: int = 32) -> list[list[dict]]:
    """Re-score each query's hits with the cross-encoder and sort them by that score (ties
    keep the retrieval order); the cosine moves to ``retrieval_score``."""
    pairs = [(query, hit["text"]) for query, found in zip(queries, hits) for hit in found]
    if not pairs:
        return hits
    scores = iter(p["score"] for p in reranker.predict(texts=[q for q, _ in pairs],
                                                       text_pairs=[t for _, t in pairs],
                                                       batch_size=batch_size))
    reranked = []
    for found in hits:
        scored = [{**hit, "score": float(next(scores)), "retrieval_score": hit["score"]}
                  for hit in found]
        reranked.append(sorted(scored, key=lambda hit: -hit["score"]))
    return reranked
