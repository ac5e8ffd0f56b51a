"""The work of ``bertkit index`` and ``bertkit search``: the library calls and what they print."""

from __future__ import annotations

import json
from typing import Sequence

from bertkit.search.index import (DEFAULT_CHUNK_SIZE, EF_SEARCH, SearchIndex, add_documents,
                                  build_index, check_top_k)

SHOWN_CHARS = 100  # of each hit's text in the terminal view


def run_index_command(model: str | None, corpus: str, out: str, *, hnsw: bool = False,
                      batch_size: int = 32, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      resume: bool | str = False, overwrite: bool = False, add: bool = False,
                      ef_search: int = EF_SEARCH, progress: bool = True) -> str:
    """Build the index ``out`` from ``corpus`` with ``model`` (``add``: append ``corpus`` to
    the existing index ``out``, whose own model embeds it; ``model`` then only has to be that
    model). Returns the line to print."""
    if add:
        if hnsw or overwrite or ef_search != EF_SEARCH:
            raise ValueError("--add appends to the index as it is: --hnsw, --ef-search and "
                             "--overwrite go with building a new one")
        summary = add_documents(out, corpus, model_dir=model, chunk_size=chunk_size,
                                batch_size=batch_size, resume=resume, progress=progress)
    else:
        if model is None:
            raise ValueError("--model is needed to build an index (only --add may leave it out)")
        summary = build_index(model, corpus, out, hnsw=hnsw, chunk_size=chunk_size,
                              batch_size=batch_size, overwrite=overwrite, resume=resume,
                              ef_search=ef_search, progress=progress)
    return summary.line()


def search(index_dir: str, queries: str | Sequence[str], top_k: int = 10, *,
           rerank_model: str | None = None, candidates: int | None = None,
           model_dir: str | None = None, ef_search: int | None = None) -> list[list[dict]]:
    """Open ``index_dir`` and search it once (see :meth:`SearchIndex.load` and
    :meth:`SearchIndex.search`); to search many times, load it once."""
    check_top_k(top_k)
    index = SearchIndex.load(index_dir, model_dir=model_dir, rerank_model=rerank_model,
                             ef_search=ef_search)
    return index.search(queries, top_k, candidates=candidates)


def format_hits(query: str, hits: list[dict]) -> str:
    """The terminal view of one query's hits: rank, score, id and the start of the text."""
    lines = [f"query: {query}"]
    for hit in hits:
        text = " ".join(hit["text"].split())
        text = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"
        extra = f" (cosine {hit['retrieval_score']:.4f})" if "retrieval_score" in hit else ""
        lines.append(f"  {hit['rank']:>3}  {hit['score']:.4f}{extra}  [{hit['id']}]  {text}")
    return "\n".join(lines)


def run_search_command(index: str, queries: Sequence[str], top_k: int = 10, *,
                       rerank: str | None = None, candidates: int | None = None,
                       model: str | None = None, ef_search: int | None = None,
                       as_json: bool = False) -> str:
    """``bertkit search``: the hits of each query, as a table or (``as_json``) one JSON line
    ``{"query", "results"}`` per query."""
    results = search(index, list(queries), top_k, rerank_model=rerank, candidates=candidates,
                     model_dir=model, ef_search=ef_search)
    if as_json:
        return "\n".join(json.dumps({"query": q, "results": hits}, ensure_ascii=False)
                         for q, hits in zip(queries, results))
    return "\n\n".join(format_hits(q, hits) for q, hits in zip(queries, results))
