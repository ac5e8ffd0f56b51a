"""Model code: the Transformer's layers (layers.py) and BERT with its heads (bert.py)."""
