"""Metrics: per-epoch curves of one run or several overlaid, and the latest confusion matrix.
The charts redraw themselves while a run trains; the rest of the page stays put."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from trainer import protocol

from dashboard import run_reader
from dashboard.views import common
from dashboard.views import proposals as proposals_view

LIVE = (run_reader.STARTING, protocol.TRAINING, protocol.WAITING)
CHARTS = [
    ("Loss", {"train_loss": "training", "val_loss": "validation"}, None),
    ("Accuracy", {"train_acc": "training", "val_acc": "validation"}, ".0%"),
    ("Precision, recall and F1 (validation)", {"val_precision": "precision", "val_recall": "recall",
                                               "val_f1": "F1"}, ".0%"),
    ("Feedback penalty and wrong-reason share",
     {"penalty": "penalty (before λ)", "wrong_reason": "wrong-reason share, held-out images"}, None),
    ("What the marks still decide (held-out images)",
     {"reliance_flip": "answers changed by swapping the marked artefacts"}, ".0%"),
]


def render() -> None:
    st.title("Metrics")
    summaries = run_reader.list_summaries(common.runs_dir())
    if not summaries:
        st.info("No runs yet: start one on the Runs page, and its curves appear here after the first epoch.",
                icon=":material/monitoring:")
        return
    names = common.pick_runs_to_compare(summaries)
    live = any(s.state in LIVE for s in summaries if s.name in names)
    st.fragment(charts, run_every=common.REFRESH_SECONDS if live else None)(names)


def charts(names: list[str]) -> None:
    marks_line = proposals_view.counts_line(common.run_dir(names[0]))
    if marks_line:
        st.caption(f"{names[0]}: {marks_line}")
    frame = common.metrics(names)
    if frame.empty:
        st.info("No finished epoch yet: the curves appear when the first epoch ends.", icon=":material/hourglass_top:")
        return
    tiles(frame[frame.run == names[0]])
    left, right = st.columns(2)
    for i, (title, columns, tick_format) in enumerate(CHARTS):
        with (left if i % 2 == 0 else right):
            figure = line_chart(frame, title, columns, tick_format, overlay=len(names) > 1)
            if figure is not None:
                st.plotly_chart(figure, key=f"chart-{i}")
    test_results([common.run_dir(name) for name in names])
    confusion_matrix(common.run_dir(names[0]))


def test_results(runs: list[protocol.RunDir]) -> None:
    """The finished runs' held-out test figures side by side; the shortcut gap (generated sets) and the
    reliance on the marked artefacts (any data set with marks) are the behavioural measures of what
    feedback changed, the wrong-reason share the input-gradient one."""
    table = run_reader.test_results(runs)
    if table.empty:
        return
    st.subheader("Held-out test, after training")
    reliance = [c for c in run_reader.RELIANCE_COLUMNS if c in table]
    if not table[reliance].notna().any().any():
        table = table.drop(columns=reliance)
    consistent = table.test_consistent_acc.notna().any()
    if consistent:
        st.caption("On the test split the confounder (sticker, patch, corner mark) is independent of the label; "
                   "in its label-consistent copy it goes with the label, as in training. The gap between the two "
                   "is how much the shortcut decides: near 0 when the model ignores it; when the shortcut decides "
                   "alone, test accuracy falls to chance and the gap is the rest.")
    else:
        table = table.drop(columns=["test_consistent_acc", "shortcut_gap"])
    others = [c for c in table.columns if c.startswith("split:")]  # further held-out splits, by name
    points = [c for c in ("test_acc", "test_consistent_acc", "shortcut_gap", "reliance_flip_rate",
                          "reliance_swapped_acc") if c in table] + others
    table[points] = table[points] * 100
    st.dataframe(table, hide_index=True, column_config={
        **{c: st.column_config.NumberColumn(f"{c.removeprefix('split:')} accuracy", format="%.1f%%",
                                            help="A further held-out split of the data set, named in its CSV")
           for c in others},
        "run": st.column_config.TextColumn("Run"),
        "test_acc": st.column_config.NumberColumn("Test accuracy", format="%.1f%%"),
        "test_consistent_acc": st.column_config.NumberColumn("Label-consistent accuracy", format="%.1f%%"),
        "shortcut_gap": st.column_config.NumberColumn(
            "Shortcut gap", format="%.1f points", help="Label-consistent minus test accuracy: lower is better"),
        "reliance_flip_rate": st.column_config.NumberColumn(
            "Answers changed by the marked artefact", format="%.1f%%",
            help="Held-out images with the artefacts people marked pasted in (from images of another class, at the "
                 "same place) or removed: the share of answers that changed. Lower is better; needs only the marks, "
                 "so it works on your own data too"),
        "reliance_swapped_acc": st.column_config.NumberColumn(
            "Accuracy, artefact swapped", format="%.1f%%", help="Accuracy on those swapped images"),
        "reliance_images": st.column_config.NumberColumn("Swapped images", format="%d"),
        "test_wrong_reason": st.column_config.NumberColumn(
            "Wrong-reason share", format="%.3f",
            help="Share of input-gradient attribution inside the confounder's true region (an input-gradient "
                 "measure: a flat gradient can hide a shortcut that the gap shows)"),
    })
    for run in runs:
        sentence = protocol.describe_reliance(run_reader.reliance(run))
        if sentence:
            st.markdown(f"**{run.name}**: {sentence}" if len(runs) > 1 else sentence)


def tiles(frame: pd.DataFrame) -> None:
    last = frame.iloc[-1]
    best = frame.loc[frame.val_loss.idxmin()] if frame.val_loss.notna().any() else last
    a, b, c, d = st.columns(4)
    a.metric("Epochs done", int(last.epoch))
    b.metric("Validation accuracy", f"{last.val_acc:.1%}", help="After the latest epoch")
    c.metric("Best validation loss", common.fmt(best.val_loss), help=f"Epoch {int(best.epoch)}")
    d.metric("Images with feedback", int(last.n_feedback) if pd.notna(last.n_feedback) else 0)


def line_chart(frame: pd.DataFrame, title: str, columns: dict[str, str], tick_format: str | None, overlay: bool):
    """One chart of several metric columns; with several runs, colour tells the run and the dash the metric."""
    present = [c for c in columns if c in frame and frame[c].notna().any()]
    if not present:
        return None
    long = frame.melt(id_vars=["run", "epoch"], value_vars=present, var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(columns)
    long = long.dropna(subset=["value"])
    colour = "run" if overlay else "metric"
    figure = px.line(long, x="epoch", y="value", color=colour, line_dash="metric" if overlay else None,
                     markers=True, title=title, color_discrete_sequence=px.colors.qualitative.D3)
    # the legend under the plot: beside it, long run names leave the plot a sliver of the width
    figure.update_layout(height=380 + 22 * long[colour].nunique() * (2 if overlay else 0), legend_title_text="",
                         margin=dict(l=10, r=10, t=50, b=10), yaxis_title=None, xaxis=dict(title="epoch", dtick=1),
                         legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
    if tick_format:
        figure.update_yaxes(tickformat=tick_format)
    return figure


def confusion_matrix(run: protocol.RunDir) -> None:
    doc = common.confusion(run)
    if doc is None:
        return
    names = doc["class_names"]
    st.subheader(f"Confusion matrix of {run.name}, epoch {doc['epoch']}")
    st.caption("Rows: the true class. Columns: what the model said. The diagonal holds the correct answers.")
    figure = px.imshow(doc["matrix"], x=names, y=names, text_auto=True, color_continuous_scale="Blues",
                       labels=dict(x="predicted", y="true", color="images"), aspect="auto")
    figure.update_layout(height=max(320, 36 * len(names) + 120), margin=dict(l=10, r=10, t=10, b=10))
    figure.update_xaxes(side="top", type="category")
    figure.update_yaxes(type="category")
    left, _ = st.columns(2)
    left.plotly_chart(figure, key="confusion")


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
