"""Did it learn? For every image that got marks: how much of the model's attribution still falls inside
them after each later epoch (the wrong-reason share), and its saliency beside the marks."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import overlay, run_reader
from dashboard.masks import Geometry
from dashboard.views import common

PICTURE_WIDTH = 160
MAX_EPOCHS_SHOWN = 6


def render() -> None:
    st.title("Did it learn?")
    st.caption("Whether the model moved its attention away from what you marked.")
    summaries = run_reader.list_summaries(common.runs_dir())
    if not summaries:
        st.info("No runs yet: start one on the Runs page and answer its questions on the Review page.",
                icon=":material/school:")
        return
    summary = common.pick_run(summaries)
    run = summary.run
    tracking = common.tracking(run)
    if tracking.empty:
        st.info("Nothing to show yet. After marks are sent and the next epoch ends, this page shows for every "
                "marked image how much of the model's attention still falls inside the marks.",
                icon=":material/hourglass_top:")
        return
    trend_chart(tracking, common.metrics([run.name]))
    index = image_table(tracking)
    if index is not None:
        image_history(run, index, tracking[tracking["index"] == index])


def trend_chart(tracking: pd.DataFrame, metrics: pd.DataFrame) -> None:
    st.subheader("Attribution inside the marked regions")
    st.caption("Each thin line is one marked image: the share of the model's attribution that falls inside "
               "its marks, after each epoch. Going down means the model relies less on what was marked.")
    figure = go.Figure()
    for i, (index, rows) in enumerate(tracking.groupby("index")):
        figure.add_trace(go.Scatter(x=rows.epoch, y=rows.masked_share, mode="lines+markers", name="one image",
                                    legendgroup="images", showlegend=i == 0, marker=dict(size=4),
                                    line=dict(color="rgba(120,130,150,0.45)", width=1),
                                    hovertemplate=f"image {index}<br>epoch %{{x}}: %{{y:.1%}}<extra></extra>"))
    mean = tracking.groupby("epoch", as_index=False).masked_share.mean()
    figure.add_trace(go.Scatter(x=mean.epoch, y=mean.masked_share, mode="lines+markers",
                                name="average of marked images", line=dict(color="#1f77b4", width=3)))
    if "wrong_reason" in metrics and metrics.wrong_reason.notna().any():
        figure.add_trace(go.Scatter(x=metrics.epoch, y=metrics.wrong_reason, mode="lines+markers",
                                    name="held-out images, known confounder",
                                    line=dict(color="#ff7f0e", width=2, dash="dash")))
    figure.update_layout(height=360, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.2),
                         xaxis=dict(title="epoch", dtick=1), yaxis=dict(title=None, tickformat=".1~%", rangemode="tozero"))
    st.plotly_chart(figure, key="trend")


def image_table(tracking: pd.DataFrame) -> int | None:
    """One row per marked image with its trend; the selected row is shown below."""
    rows = []
    for index, group in tracking.groupby("index"):
        shares = group.masked_share.tolist()
        rows.append({"Image": int(index), "First epoch": int(group.epoch.iloc[0]), "At first": shares[0],
                     "Now": shares[-1], "Change": shares[-1] - shares[0], "Trend": shares})
    table = pd.DataFrame(rows).sort_values("Change", ignore_index=True)
    st.subheader("Marked images")
    st.caption("Select a row to see that image's saliency after each epoch.")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="images",
                         column_config={
                             "Image": st.column_config.NumberColumn(help="Index in the training set", format="%d"),
                             "At first": st.column_config.NumberColumn(format="percent"),
                             "Now": st.column_config.NumberColumn(format="percent"),
                             "Change": st.column_config.NumberColumn(format="percent"),
                             "Trend": st.column_config.LineChartColumn(y_min=0.0),
                         })
    selected = event.selection.rows
    return int(table.Image.iloc[selected[0] if selected else 0]) if len(table) else None


def image_history(run, index: int, rows: pd.DataFrame) -> None:
    mask = common.feedback_masks(run).get(index)
    image = common.query_images(run).get(index)
    if mask is None or image is None:
        st.warning(f"The marks or the picture of image {index} cannot be found in this run's folder.")
        return
    geometry = Geometry.fit(*mask.shape, side=PICTURE_WIDTH)
    st.subheader(f"Image {index}")
    st.caption("Left: the marks (red: must not use; outside green: counts as must not use). Then the model's "
               "saliency after each epoch, with the marks outlined in yellow.")
    with st.container(horizontal=True, gap="medium"):
        st.image(overlay.compose(image, geometry, forbidden=mask), width=PICTURE_WIDTH, caption="your marks")
        for row in rows.tail(MAX_EPOCHS_SHOWN).itertuples():
            saliency = run_reader.tracked_saliency(run, row.epoch, index, mask.shape)
            caption = f"after epoch {row.epoch}: {row.masked_share:.1%} inside"
            if saliency is None:
                st.caption(f"{caption} (map missing)", width=PICTURE_WIDTH)
            else:
                st.image(overlay.compose(image, geometry, saliency, opacity=0.9, outline=mask),
                         width=PICTURE_WIDTH, caption=caption)


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
