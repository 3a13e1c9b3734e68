"""Did it learn? For every image that got marks: how much of the model's attribution still falls inside
them after each later epoch, and its saliency beside the marks. Each mark is measured by what it
means: attribution inside "must not use" (red) marks should go down, inside "should use" (green) marks
up. (Under the default penalty everything outside green marks counts as must-not-use; read that way a
green-marked image showed e.g. 54% "inside the marks", which looked like a failure when it was not.)"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from trainer import protocol

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
    common.unreadable(_answer_problems(str(run.path), common.feedback_stamp(run), tuple(protocol.queue_epochs(run))),
                      run.name)
    reliance_line(run)
    teaching = run_reader.teaching(run)
    if teaching:
        st.caption(teaching)
    tracking = common.tracking(run)
    if tracking.empty:
        st.info("Nothing to show yet. After marks are sent and the next epoch ends, this page shows for every "
                "marked image how much of the model's attention still falls inside the marks.",
                icon=":material/hourglass_top:")
        return
    tracking = by_meaning(run, tracking)
    trend_chart(tracking, common.metrics([run.name]))
    index = image_table(tracking)
    if index is not None:
        image_history(run, index, tracking[tracking["index"] == index])


RED, GREEN = "must not use", "should use"


def reliance_line(run: protocol.RunDir) -> None:
    """What the marks still decide, in a sentence: after training from the run's result, while it trains
    from the latest epoch's cheap measurement (trainer/reliance.py)."""
    sentence = protocol.describe_reliance(run_reader.reliance(run))
    if sentence is None:
        metrics = common.metrics([run.name])
        flips = metrics.dropna(subset=["reliance_flip"]) if "reliance_flip" in metrics else metrics.iloc[:0]
        if flips.empty:
            return
        last = flips.iloc[-1]
        sentence = (f"After epoch {int(last.epoch)}, swapping the marked artefacts in held-out images (pasting them "
                    f"where they were not, removing them where they were) changed {last.reliance_flip:.0%} of the "
                    f"model's answers; the full measurement comes when training ends.")
    st.info(sentence, icon=":material/swap_horiz:")


@st.cache_data(max_entries=32, show_spinner=False)
def _answer_problems(path: str, stamp: tuple, epochs: tuple) -> list[str]:
    return run_reader.answer_problems(protocol.RunDir(path))


@st.cache_data(max_entries=32, show_spinner=False)
def _relevant_regions(path: str, stamp: tuple) -> dict[int, np.ndarray]:
    """Per training-image index, the union of every "should use" mark sent for it."""
    run = protocol.RunDir(path)
    marks = protocol.union_marks(a for epoch in protocol.queue_epochs(run)
                                 for a in (run_reader.sent_answers(run, epoch) or {}).values())
    return {index: m.relevant for index, m in marks.items() if m.relevant is not None}


def by_meaning(run: protocol.RunDir, tracking: pd.DataFrame) -> pd.DataFrame:
    """``tracking`` with each image's marks kind and ``share``: for red-marked images the trainer's
    share inside the marks; for green-marked ones the share of attribution inside the green region,
    from the saliency maps the trainer kept (rows whose map is missing are left out)."""
    regions = _relevant_regions(str(run.path), common.feedback_stamp(run))
    kinds, shares = [], []
    for row in tracking.itertuples():
        region = regions.get(row.index)
        if region is None:
            kinds.append(RED)
            shares.append(row.masked_share)
            continue
        saliency = run_reader.tracked_saliency(run, row.epoch, row.index, region.shape)
        mass = np.abs(saliency) if saliency is not None else None
        kinds.append(GREEN)
        shares.append(float(mass[region].sum() / mass.sum()) if mass is not None and mass.sum() > 0 else np.nan)
    return tracking.assign(kind=kinds, share=shares).dropna(subset=["share"])


def trend_chart(tracking: pd.DataFrame, metrics: pd.DataFrame) -> None:
    st.subheader("Attribution inside the marked regions")
    st.caption("Each thin line is one marked image: the share of the model's attribution that falls inside "
               "its marks, after each epoch. Inside red (must not use) marks it should go **down**; inside green "
               "(should use) marks it should go **up**.")
    figure = go.Figure()
    styles = {RED: ("rgba(120,130,150,0.45)", "#1f77b4", "red marks: inside (should go down)"),
              GREEN: ("rgba(40,160,80,0.35)", "#2ca02c", "green marks: inside (should go up)")}
    for kind, (thin, thick, name) in styles.items():
        part = tracking[tracking.kind == kind]
        for i, (index, rows) in enumerate(part.groupby("index")):
            figure.add_trace(go.Scatter(x=rows.epoch, y=rows.share, mode="lines+markers", name=f"one image, {kind}",
                                        legendgroup=kind, showlegend=i == 0, marker=dict(size=4),
                                        line=dict(color=thin, width=1),
                                        hovertemplate=f"image {index}<br>epoch %{{x}}: %{{y:.1%}}<extra></extra>"))
        if not part.empty:
            mean = part.groupby("epoch", as_index=False).share.mean()
            figure.add_trace(go.Scatter(x=mean.epoch, y=mean.share, mode="lines+markers", name=f"average, {name}",
                                        line=dict(color=thick, width=3)))
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
        shares, kind = group.share.tolist(), group.kind.iloc[0]
        change = shares[-1] - shares[0]
        rows.append({"Image": int(index), "Marks": kind, "First epoch": int(group.epoch.iloc[0]),
                     "At first": shares[0], "Now": shares[-1], "Change": change,
                     "As meant": None if len(shares) < 2 else bool(change < 0) if kind == RED else bool(change > 0),
                     "Trend": shares})
    table = pd.DataFrame(rows)
    table = table.assign(order=np.where(table.Marks == RED, table.Change, -table.Change)).sort_values(
        "order", ignore_index=True).drop(columns="order")
    st.subheader("Marked images")
    st.caption("Select a row to see that image's saliency after each epoch.")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="images",
                         column_config={
                             "Image": st.column_config.NumberColumn(help="Index in the training set", format="%d"),
                             "Marks": st.column_config.TextColumn(
                                 help="must not use: the share inside red marks should go down; should use: "
                                      "the share inside green marks should go up"),
                             "As meant": st.column_config.CheckboxColumn(
                                 help="Whether the share moved the way the marks ask (empty after one epoch)"),
                             "At first": st.column_config.NumberColumn(format="percent"),
                             "Now": st.column_config.NumberColumn(format="percent"),
                             "Change": st.column_config.NumberColumn(format="percent"),
                             "Trend": st.column_config.LineChartColumn(y_min=0.0),
                         })
    selected = event.selection.rows
    return int(table.Image.iloc[selected[0] if selected else 0]) if len(table) else None


def image_history(run, index: int, rows: pd.DataFrame) -> None:
    mask = common.feedback_masks(run).get(index)
    relevant = _relevant_regions(str(run.path), common.feedback_stamp(run)).get(index)
    image = common.query_images(run).get(index)
    if mask is None or image is None:
        st.info(f"Image {index} has no {'marks' if mask is None else 'picture'} in this run's folder: masks given "
                "before training (`--prior-masks`) come without one, as does an image whose queue was deleted. "
                "Its line in the chart above still shows how its attribution moved.",
                icon=":material/image_not_supported:")
        return
    geometry = Geometry.fit(*mask.shape, side=PICTURE_WIDTH)
    st.subheader(f"Image {index}")
    st.caption("Left: the marks (red: must not use; green: should use, and outside it counts as must not use). "
               "Then the model's saliency after each epoch, with the marks outlined in yellow.")
    with st.container(horizontal=True, gap="medium"):
        shown = mask & ~relevant if relevant is not None else mask
        st.image(overlay.compose(image, geometry, forbidden=shown, relevant=relevant), width=PICTURE_WIDTH,
                 caption="your marks")
        outline = relevant if relevant is not None else mask
        for row in rows.tail(MAX_EPOCHS_SHOWN).itertuples():
            saliency = run_reader.tracked_saliency(run, row.epoch, index, mask.shape)
            caption = f"after epoch {row.epoch}: {row.share:.1%} inside " + ("green" if relevant is not None else "red")
            if saliency is None:
                st.caption(f"{caption} (map missing)", width=PICTURE_WIDTH)
            else:
                st.image(overlay.compose(image, geometry, saliency, opacity=0.9, outline=outline),
                         width=PICTURE_WIDTH, caption=caption)


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
