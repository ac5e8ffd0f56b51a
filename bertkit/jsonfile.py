"""Reading the small JSON files of a model folder (config.json, tokenizer_config.json,
adapter_config.json) with errors that name the file."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json_object(path: str | os.PathLike, missing: str | None = None) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises FileNotFoundError (``missing``, or a message naming the path) when there is no such
    file, and ValueError naming the file when it is not valid JSON or not a JSON object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing or f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
