"""training/logs.py's curves.png (issue 20): a grid of at most three panels a row, a y-label on
every panel, baselines as dashed lines in their metric's panel, the best step marked, y-limits
that do not turn a 0.001 change into a cliff, a lone evaluation drawn as a labelled marker on the
run's whole step range, and no matplotlib warning."""

from collections import Counter

from bertkit.training.logs import PANELS_PER_ROW, curve_panels, draw_curves, plot_curves

BASELINE = 0.044


def pretraining_history(steps=200, eval_every=50):
    """What run_pretraining logs: train losses, held-out MLM/NSP metrics and the baseline."""
    history = [{"event": "start", "step": 0}]
    for step in range(10, steps + 1, 10):
        history.append({"event": "train", "step": step, "loss": 9.0 - step / 100, "lr": 1e-3})
        if step % eval_every == 0:
            history.append({"event": "eval", "step": step, "epoch": step / 160,
                            "mlm_loss": 7.0 - step / 200, "mlm_accuracy": 0.04 + step / 8000,
                            "mlm_unigram_baseline": BASELINE,
                            "nsp_loss": 0.6939 + step / 200000, "nsp_accuracy": 0.5,
                            "eval_loss": 7.7 - step / 200})
    history.append({"event": "end", "step": steps, "stop_reason": "max_steps"})
    return history


def one_evaluation_history():
    """A short fine-tuning run evaluated once, at its last step."""
    return [{"event": "train", "step": 10, "loss": 2.1}, {"event": "train", "step": 20, "loss": 1.9},
            {"event": "eval", "step": 20, "epoch": 1.0, "accuracy": 0.41, "macro_f1": 0.2,
             "eval_loss": 1.8}]


def rows_of(fig) -> Counter:
    return Counter(ax.get_subplotspec().rowspan.start for ax in fig.axes)


def axis_titled(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def vertical_lines_at(ax, step) -> list:
    return [line for line in ax.lines if list(line.get_xdata()) == [step, step]]


def test_pretraining_curves(recwarn):
    fig = draw_curves(pretraining_history(), best_step=150)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mlm_accuracy", "nsp_accuracy"]
    assert max(rows_of(fig).values()) <= PANELS_PER_ROW
    assert all(ax.get_ylabel() for ax in fig.axes)

    # the baseline: a dashed line at its value in the accuracy panel, not a panel of its own
    accuracy = axis_titled(fig, "mlm_accuracy")
    dashed = [line for line in accuracy.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {BASELINE}
    assert "mlm unigram baseline" in [t.get_text() for t in accuracy.get_legend().get_texts()]
    # accuracies from 0; the held-out losses (mlm 6.0..6.75, nsp 0.694) share the loss panel
    assert accuracy.get_ylim()[0] == 0 and axis_titled(fig, "nsp_accuracy").get_ylim()[0] == 0
    loss = axis_titled(fig, "loss")
    assert {line.get_label() for line in loss.lines} >= {"train loss", "mlm loss", "nsp loss",
                                                         "eval loss"}
    # the best step: a dotted vertical line in every panel, named once in the legend
    assert all(len(vertical_lines_at(ax, 150)) == 1 for ax in fig.axes)
    assert "best (step 150)" in [t.get_text() for t in loss.get_legend().get_texts()]
    assert not [str(w.message) for w in recwarn]


def test_a_tiny_change_is_drawn_flat():
    # nsp_loss 0.6939 -> 0.6950 on its own: the y-range is at least 5% of the value, so the
    # 0.0011 change fills under a third of the panel instead of all of it.
    history = [{"event": "eval", "step": s, "nsp_loss": v, "nsp_accuracy": 0.47 + s / 10000}
               for s, v in ((100, 0.6939), (200, 0.6950))]
    accuracy_values = {p.title: p.values for p in curve_panels(history)}["nsp_accuracy"]
    fig = draw_curves(history)
    low, high = axis_titled(fig, "loss").get_ylim()
    assert high - low >= 0.05 * 0.695
    assert low < 0.6939 and high > 0.6950
    low, high = axis_titled(fig, "nsp_accuracy").get_ylim()
    assert low == 0 and max(accuracy_values) < high <= 1


def test_one_evaluation(recwarn, tmp_path):
    history = one_evaluation_history()
    fig = draw_curves(history, best_step=20)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "macro_f1"]
    assert all(ax.get_ylabel() for ax in fig.axes)
    for ax in fig.axes:
        # the whole run's steps, not a zoom around the one evaluation (19.00 .. 21.00)
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 20
    accuracy = axis_titled(fig, "accuracy")
    (marker,) = [line for line in accuracy.lines if line.get_marker() == "o"]
    assert list(marker.get_ydata()) == [0.41]
    assert [t.get_text() for t in accuracy.texts] == ["0.41"]
    assert accuracy.get_ylim()[0] == 0
    assert not [str(w.message) for w in recwarn]

    path = tmp_path / "curves.png"
    assert plot_curves(history, str(path), best_step=20) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_metrics_wrap_into_rows_of_three():
    history = [{"event": "train", "step": s, "loss": 1 / s} for s in (1, 2, 3)]
    history += [{"event": "eval", "step": s, **{f"metric_{i}": i + s for i in range(7)}}
                for s in (1, 3)]
    fig = draw_curves(history)
    assert len(fig.axes) == 8
    assert sorted(rows_of(fig).values()) == [2, 3, 3]
    assert all(ax.get_ylabel() for ax in fig.axes)


def test_no_warning_without_labelled_curves(recwarn, tmp_path):
    # translation's dev metrics (bleu, loss, nll, a text signature), no train loss logged yet:
    # matplotlib used to warn "No artists with labels found to put in legend"
    history = [{"event": "eval", "step": 5, "bleu": 1.5, "loss": 6.0, "nll": 5.8,
                "signature": "nrefs:1"}]
    assert plot_curves(history, str(tmp_path / "curves.png")) is not None
    assert [p.title for p in curve_panels(history)] == ["loss", "bleu"]
    assert not [str(w.message) for w in recwarn]
    assert plot_curves([{"event": "start", "step": 0}], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()
