"""Search (issue 16): a corpus embedded into a faiss index on disk, searched by cosine, with
an optional cross-encoder rerank of the top hits.

=================  ========================================================================
corpus.py          read a ``.txt`` / ``.jsonl`` corpus, every line checked
encoder.py         the model an index is built with and its fingerprint
index.py           :func:`build_index` (resumable chunks), :func:`add_documents`,
                   :class:`SearchIndex` (load, search, rerank)
command.py         the work of ``bertkit index`` and ``bertkit search``
=================  ========================================================================

::

    from bertkit.search import build_index, add_documents, SearchIndex
    build_index("all-MiniLM-L6-v2", "docs.txt", "docs-index")           # flat: exact
    add_documents("docs-index", "more.jsonl")
    index = SearchIndex.load("docs-index", rerank_model=None)
    index.search("how do I open a file?", top_k=5)   # [[{"id", "text", "score", "rank"}]]
"""

from __future__ import annotations

from bertkit.search.command import (format_hits, run_index_command, run_search_command,
                                    search)
from bertkit.search.corpus import Document, read_corpus
from bertkit.search.encoder import Encoder, load_encoder, model_fingerprint
from bertkit.search.index import (IndexInfo, IndexSummary, SearchIndex, add_documents,
                                  build_index, read_index_info)

__all__ = ["build_index", "add_documents", "SearchIndex", "search", "IndexInfo",
           "IndexSummary", "read_index_info", "read_corpus", "Document", "Encoder",
           "load_encoder", "model_fingerprint", "run_index_command", "run_search_command",
           "format_hits"]
