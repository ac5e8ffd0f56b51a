"""The work of ``bertkit explain``: explain one text or a file of texts, write the HTML
report(s) through the output guard, and return what the command prints."""

from __future__ import annotations

import os

from bertkit.explain.attributions import DEFAULT_STEPS, explain
from bertkit.explain.report import terminal_view, to_json, write_batch_reports, write_report
from bertkit.explain.subject import load_explainable
from bertkit.jsonfile import json_object_line, utf8_errors_named
from bertkit.outputs import check_output_file, check_output_folder, output_file, output_folder


def read_explain_file(path: str) -> list[tuple[str, str | None]]:
    """(text, pair) per example: a ``.jsonl`` file of ``{"text", "text_pair"}`` objects (QA:
    ``question`` and ``context``), or any other file with one text per non-empty line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--file {path} does not exist")
    with utf8_errors_named(path), open(path, encoding="utf-8") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise ValueError(f"--file {path} holds no text")
    if not path.endswith(".jsonl"):
        return [(line, None) for _, line in lines]
    examples = []
    for number, line in lines:
        record = json_object_line(line, path, number)
        text = record.get("text", record.get("question"))
        pair = record.get("text_pair", record.get("context"))
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
            raise ValueError(f"{path}:{number}: expected a string \"text\" (or \"question\") "
                             "and an optional string \"text_pair\" (or \"context\")")
        examples.append((text, pair))
    return examples


def run_explain_command(model: str, text: str | None = None, pair: str | None = None,
                        target: str | None = None, method: str = "ig",
                        steps: int | None = DEFAULT_STEPS, out: str | None = None,
                        as_json: bool = False, file: str | None = None,
                        overwrite: bool = False) -> str:
    """Explain ``text`` (+ ``pair``) or every example of ``file`` with the model folder
    ``model``; write the HTML page to ``out`` (with ``file``: a folder of pages and
    ``index.html``). Returns the terminal view (or JSON lines with ``as_json``), with a last
    line naming what was written."""
    if (text is None) == (file is None):
        raise ValueError("give either one TEXT or --file, not both" if text is not None
                         else "give a TEXT to explain (or --file)")
    if file is not None and pair is not None:
        raise ValueError("--pair goes with one TEXT; in --file give \"text_pair\" per line")
    inputs = {"--model": model, "--file": file}
    if out is not None:  # refuse a bad --out before the work, not after
        (check_output_file if file is None else check_output_folder)(
            out, inputs=inputs, overwrite=overwrite)
    subject = load_explainable(model)
    examples = [(text, pair)] if file is None else read_explain_file(file)
    explanations = [explain(subject, t, p, target=target, method=method, steps=steps)
                    for t, p in examples]
    shown = [to_json(e) if as_json else terminal_view(e) for e in explanations]
    printed = "\n".join(shown) if as_json else "\n\n".join(shown)
    if out is None:
        return printed
    if file is None:
        with output_file(out, inputs=inputs, overwrite=overwrite) as temporary:
            write_report(explanations[0], temporary)
        written = f"wrote {out}"
    else:
        with output_folder(out, inputs=inputs, overwrite=overwrite) as staging:
            write_batch_reports(explanations, staging)
        written = f"wrote {len(explanations)} pages and {os.path.join(out, 'index.html')}"
    if as_json:
        return printed  # machines read stdout: the path is in --out already
    return f"{printed}\n{written}"


__all__ = ["run_explain_command", "read_explain_file"]
