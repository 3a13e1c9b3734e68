"""Evaluation: how faithful a run's explanations are (``hitl-evaluate``), one run or several overlaid:
masked accuracy and deletion curves, and a table of deletion AUC and wrong-reason share."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import run_reader
from dashboard.views import common

CURVES = [
    ("masked_accuracy", "Masked accuracy",
     "Accuracy after removing the most salient pixels first (no retraining). A steeper drop means the "
     "explanation points at what the model really uses."),
    ("deletion", "Deletion",
     "Mean probability of the class the model first predicted, as the most salient pixels are removed. "
     "A lower curve (smaller area) means a more faithful explanation."),
]


def render() -> None:
    st.title("Evaluation")
    st.caption("How faithful the explanations are: whether removing what they point at changes the prediction.")
    summaries = run_reader.list_summaries(common.runs_dir())
    if not summaries:
        st.info("No runs yet: start one on the Runs page, then evaluate it with `hitl-evaluate`.",
                icon=":material/fact_check:")
        return
    names = common.pick_runs_to_compare(summaries)
    curves, table, broken = common.evaluation(names)
    missing = [n for n in names if n not in set(curves.run) and n not in broken]
    if missing:
        st.info(f"Not evaluated yet: {', '.join(missing)}. Measure a run's explanations with",
                icon=":material/hourglass_top:")
        st.code("\n".join(f"hitl-evaluate {n} --runs-dir {common.runs_dir()}" for n in missing), language="bash")
    if curves.empty:
        return
    left, right = st.columns(2)
    overlay = curves.run.nunique() > 1
    for column, (key, title, caption) in zip((left, right), CURVES):
        with column:
            st.plotly_chart(curve_chart(curves, key, title, overlay), key=f"evaluation-{key}")
            st.caption(caption)
    summary_table(table)


def curve_chart(curves: pd.DataFrame, key: str, title: str, overlay: bool):
    """One curve per run and explainer; with several runs, colour tells the run and the dash the explainer."""
    figure = px.line(curves, x="fraction", y=key, color="run" if overlay else "explainer",
                     line_dash="explainer" if overlay else None, markers=True, title=title,
                     color_discrete_sequence=px.colors.qualitative.D3)
    figure.update_layout(height=340, margin=dict(l=10, r=10, t=50, b=10), legend_title_text="", yaxis_title=None,
                         xaxis_title="most salient pixels removed")
    figure.update_xaxes(tickformat=".0%")
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    return figure


def summary_table(table: pd.DataFrame) -> None:
    st.subheader("Summary")
    st.dataframe(table, hide_index=True, column_config={
        "run": "Run", "explainer": "Explainer",
        "epoch": st.column_config.NumberColumn("Epoch", help="The checkpoint's epoch"),
        "split": "Images from", "images": "Images",
        "accuracy": st.column_config.NumberColumn("Accuracy", format="percent"),
        "half_removed": st.column_config.NumberColumn("Accuracy, half removed", format="percent",
                                                      help="Lower: the explanation found what matters"),
        "deletion_auc": st.column_config.NumberColumn("Deletion AUC", format="%.3f", help="Lower is more faithful"),
        "wrong_reason": st.column_config.NumberColumn("Wrong-reason share", format="percent",
                                                      help="Attribution inside the known confounder; lower is better"),
    })


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
