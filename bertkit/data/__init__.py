"""Data: the pretraining pipeline (corpus → shards → examples → masked batches) and the
embedded default corpus and demo task built from the Python standard library's docstrings."""
