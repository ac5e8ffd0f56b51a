"""What people look at: a self-contained HTML page, a terminal view and JSON.

The page has no external resource: inline CSS, heatmaps as PNG data URIs (one per layer,
averaged over heads, and the rollout), so it can be mailed or attached to a ticket. Words are
coloured by attribution: red pushes the target up, blue pushes it down, the strongest word of
each target at full colour.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np

from bertkit.explain.attributions import Attribution, Explanation

PAGE_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem}
.words{line-height:2.2;font-size:1.1rem} .w{padding:.15rem .2rem;border-radius:.25rem}
table{border-collapse:collapse} td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}
.maps{display:flex;flex-wrap:wrap;gap:1rem} .maps figure{margin:0} figcaption{font-size:.85rem}
.note{color:#666;font-size:.9rem}
"""


def terminal_view(explanation: Explanation, top: int = 5) -> str:
    """The prediction, then per target its ``top`` most positive and most negative words."""
    lines = [f"{explanation.kind} prediction: {prediction_line(explanation)}",
             f"method: {explanation.method}"
             + (f" ({explanation.steps} steps)" if explanation.steps else "")]
    for attribution in explanation.attributions:
        lines.append(f"target {attribution.target}" + _completeness(attribution))
        ranked = sorted(range(len(attribution.words)), key=lambda i: -attribution.words[i])
        positive = [i for i in ranked if attribution.words[i] > 0][:top]
        negative = [i for i in reversed(ranked) if attribution.words[i] < 0][:top]
        for title, indices in (("  for:    ", positive), ("  against:", negative)):
            shown = ", ".join(f"{explanation.words[i].text} {attribution.words[i]:+.4f}"
                              for i in indices)
            lines.append(f"{title} {shown or '-'}")
    if not explanation.attributions:
        lines.append("nothing to attribute (no entity / answer found)")
    return "\n".join(lines)


def prediction_line(explanation: Explanation) -> str:
    """The prediction in one line."""
    p = explanation.prediction
    if "label" in p:
        return f"{p['label']} ({p['probabilities'][p['label']]:.3f})"
    if "score" in p and "answer" not in p:
        return f"score {p['score']:.4f}"
    if "entities" in p:
        return ", ".join(f"{e['entity']} ({e['label']})" for e in p["entities"]) or "no entities"
    if "answer" in p:
        return f"answer {p['answer']!r} (score {p['score']:.3f})"
    if "masks" in p:
        return "; ".join(f"[MASK] {i + 1}: {m['candidates'][0]['token']} "
                         f"({m['candidates'][0]['score']:.3f})" for i, m in enumerate(p["masks"]))
    return "none (encoder without a task head)"


def _completeness(attribution: Attribution) -> str:
    if attribution.baseline_score is None:
        return ""
    return (f"  (f(x) {attribution.score:.4f}, f(baseline) {attribution.baseline_score:.4f}, "
            f"sum {sum(attribution.tokens):.4f})")


def to_json(explanation: Explanation) -> str:
    """The explanation as one JSON document."""
    return json.dumps(explanation.to_dict(), ensure_ascii=False)


# ============================================================================ HTML


def coloured_words(explanation: Explanation, attribution: Attribution, segment: int) -> str:
    """The text of ``segment`` as HTML, each word's background coloured by its score."""
    source = explanation.text if segment == 0 else (explanation.text_pair or "")
    scale = max((abs(s) for s in attribution.words), default=0.0) or 1.0
    parts, at = [], 0
    for word, score in zip(explanation.words, attribution.words):
        if word.segment != segment:
            continue
        parts.append(html.escape(source[at:word.start]))
        alpha = abs(score) / scale
        rgb = "220,38,38" if score > 0 else "37,99,235"
        parts.append(f'<span class="w" style="background:rgba({rgb},{alpha:.2f})" '
                     f'title="{score:+.4f}">{html.escape(source[word.start:word.end])}</span>')
        at = word.end
    parts.append(html.escape(source[at:]))
    return "".join(parts)


def heatmap_pngs(explanation: Explanation) -> list[tuple[str, str]]:
    """(caption, base64 PNG) per layer (attention averaged over heads), then the rollout."""
    # matplotlib only when a page is drawn: importing it costs a second at startup.
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")  # files only, no display

    if explanation.attention is None:
        return []
    labels = explanation.tokens
    size = min(8.0, 2.0 + 0.22 * len(labels))
    images = []
    maps = [(f"layer {i + 1} (mean over heads)", m) for i, m in enumerate(explanation.attention)]
    maps.append(("rollout to [CLS]", np.asarray(explanation.rollout)[None, :]))
    for caption, matrix in maps:
        fig, ax = plt.subplots(figsize=(size, size if matrix.shape[0] > 1 else 1.6))
        ax.imshow(matrix, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)) if matrix.shape[0] > 1 else [0],
                      labels if matrix.shape[0] > 1 else ["[CLS]"], fontsize=7)
        ax.set_title(caption, fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        images.append((caption, base64.b64encode(buffer.getvalue()).decode("ascii")))
    return images


def html_page(explanation: Explanation, title: str = "bertkit explain") -> str:
    """The whole self-contained page of one explanation."""
    e = explanation
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p><b>{html.escape(e.kind)}</b> prediction: "
            f"<b>{html.escape(prediction_line(e))}</b></p>", _probability_table(e),
            f"<p class='note'>method: {e.method}"
            + (f", {e.steps} steps" if e.steps else "")
            + "; <span style='color:#dc2626'>red</span> pushes the target up, "
              "<span style='color:#2563eb'>blue</span> pushes it down.</p>"]
    for attribution in e.attributions:
        body.append(f"<h2>target: {html.escape(attribution.target)}"
                    f"{html.escape(_completeness(attribution))}</h2>")
        for segment in (0, 1) if e.text_pair is not None else (0,):
            body.append(f"<p class='words'>{coloured_words(e, attribution, segment)}</p>")
    if not e.attributions:
        body.append("<p>nothing to attribute (no entity / answer found)</p>")
    figures = "".join(f"<figure><img alt='{html.escape(c)}' src='data:image/png;base64,{b}'>"
                      f"<figcaption>{html.escape(c)}</figcaption></figure>"
                      for c, b in heatmap_pngs(e))
    body.append(f"<h2>attention</h2><div class='maps'>{figures}</div>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{PAGE_CSS}</style></head><body>{''.join(body)}</body></html>")


def _probability_table(explanation: Explanation) -> str:
    probabilities = explanation.prediction.get("probabilities")
    if not probabilities:
        return ""
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{p:.4f}</td></tr>"
                   for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]))
    return f"<table><tr><th>label</th><th>probability</th></tr>{rows}</table>"


def write_report(explanation: Explanation, path: str | os.PathLike) -> str:
    """Write the HTML page of ``explanation`` to ``path`` (a new file or one to replace:
    the CLI checks it first); return the path."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_page(explanation))
    return os.fspath(path)


def write_batch_reports(explanations: list[Explanation], folder: str | os.PathLike) -> str:
    """One page per explanation (``example-001.html`` ...) and ``index.html`` linking them,
    with each prediction; return the index path."""
    rows = []
    for number, explanation in enumerate(explanations, 1):
        name = f"example-{number:03d}.html"
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(html_page(explanation, title=f"bertkit explain: example {number}"))
        rows.append(f"<tr><td><a href='{name}'>{number}</a></td>"
                    f"<td>{html.escape(explanation.text[:120])}</td>"
                    f"<td>{html.escape(prediction_line(explanation))}</td></tr>")
    index = os.path.join(folder, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bertkit explain"
                f"</title><style>{PAGE_CSS}</style></head><body><h1>bertkit explain</h1>"
                f"<table><tr><th>#</th><th>text</th><th>prediction</th></tr>{''.join(rows)}"
                "</table></body></html>")
    return index
