"""Explanations of predictions (issue 15): token attributions (Integrated Gradients with
captum, gradient x input, occlusion) aggregated to words, attention maps and rollout, and the
reports people read.

=================  ========================================================================
subject.py         open a folder for explanation; encode one input into words; the targets
attributions.py    :func:`explain` -> :class:`Explanation`; the attribution methods
attention.py       per-layer/head attention maps, attention rollout to [CLS]
report.py          the HTML page (inline CSS, PNG data URIs), the terminal view, JSON
faithfulness.py    deletion curves, model randomisation (the checks, as library code)
command.py         :func:`run_explain_command`: the work of ``bertkit explain``
=================  ========================================================================
"""

from __future__ import annotations

from bertkit.explain.attention import attention_maps, attention_rollout, cls_rollout
from bertkit.explain.attributions import (DEFAULT_STEPS, METHODS, Attribution, Explanation,
                                          explain)
from bertkit.explain.command import run_explain_command
from bertkit.explain.faithfulness import (DeletionCurve, deletion_curve, plot_deletion_curves,
                                          randomized_top_layers)
from bertkit.explain.report import html_page, terminal_view, to_json, write_report
from bertkit.explain.subject import Explainable, load_explainable

__all__ = ["explain", "Explanation", "Attribution", "METHODS", "DEFAULT_STEPS",
           "attention_maps", "attention_rollout", "cls_rollout", "run_explain_command",
           "deletion_curve", "DeletionCurve", "plot_deletion_curves", "randomized_top_layers",
           "html_page", "terminal_view", "to_json", "write_report", "Explainable",
           "load_explainable"]
