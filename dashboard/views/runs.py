"""Runs: every run in the runs folder with its state, the controls to stop and resume one, and the
form that starts a new one."""
from __future__ import annotations

import time
from datetime import datetime

import pandas as pd
import streamlit as st

from trainer import protocol

from dashboard import launcher, run_reader
from dashboard.views import common
from dashboard.views import proposals as proposals_view

ANNOTATORS = {
    "human": "You, on the Review page",
    "oracle": "The simulated annotator (knows the confounders of generated data)",
    "none": "Nobody: plain training, for comparison",
}
SAMPLING = {
    "high_entropy_by_class": "Most uncertain images, each class in turn",
    "high_entropy": "Most uncertain images first",
    "low_entropy": "Confidently wrong images first",
    "random": "At random",
}
FEEDBACK = {
    "auto": "Counterexamples, and the penalty where the trainer cannot find your mark (default)",
    "counterexamples": "Counterexamples: the image again, marks filled from other images",
    "penalty": "Penalty on the model's gradients inside the marks",
    "both": "Both",
}
MODELS = ["hitl_cnn", "resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224"]
GENERATED_DATASETS = ("decoy-digits", "synthetic-lesions")

FORM_PROPOSALS = 10  # a person reviewing: confirming proposals costs a click each (the trainer's default is 0)


def render() -> None:
    st.title("Runs")
    st.caption(f"Training runs in `{common.runs_dir()}`. This page updates by itself.")
    run_list()
    new_run_form()


@st.fragment(run_every=common.REFRESH_SECONDS)
def run_list() -> None:
    common.show_action_errors()  # at the top, and until dismissed: the list refreshes every 2 s
    summaries = run_reader.list_summaries(common.runs_dir())
    if not summaries:
        st.info(
            "**No runs yet.** Start one with the form below: the defaults train a small model on generated "
            "digits and ask you about a few images after each epoch. From a terminal, `make train` does the "
            "same, and `make demo` runs a complete example with a simulated annotator.",
            icon=":material/rocket_launch:")
        return
    for s in summaries:
        if s.state == protocol.WAITING:
            with st.container(border=True, horizontal=True, vertical_alignment="center"):
                st.markdown(f":orange[:material/front_hand:] **{s.name}** is waiting for your feedback "
                            f"on epoch {s.waiting_epoch}.")
                common.link("review", "Review now", run=s.name, icon=":material/draw:")
    for s in summaries:
        common.unreadable(s.unreadable, s.name)
    st.dataframe(runs_table(summaries), hide_index=True, column_config={
        "Best val. accuracy": st.column_config.NumberColumn(format="%.1f%%"),
        "Best val. loss": st.column_config.NumberColumn(format="%.3f"),
        "Last update": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    })
    summary = common.pick_run(summaries, label="Details of run")
    if summary is not None:
        run_details(summary)


def runs_table(summaries: list[run_reader.RunSummary]) -> pd.DataFrame:
    return pd.DataFrame([{
        "Run": s.name,
        "State": s.state_label,
        "Epoch": f"{s.epoch} / {s.epochs}" if s.epochs else str(s.epoch),
        "This epoch": (common.epoch_progress(s.run) or (None, ""))[1],
        "Best val. loss": s.best_val_loss,
        "Best val. accuracy": 100 * s.best_val_acc,
        "Data set": s.dataset,
        "Model": s.model,
        "Feedback from": s.annotator,
        "Last update": datetime.fromtimestamp(s.updated) if s.updated else None,
    } for s in summaries])


def run_details(summary: run_reader.RunSummary) -> None:
    with st.container(border=True):
        parts = [f"epoch {summary.epoch}" + (f" of {summary.epochs}" if summary.epochs else "")]
        if summary.dataset:
            parts.append(f"data set {summary.dataset}")
        if summary.model:
            parts.append(f"model {summary.model}")
        if summary.world_size > 1:
            parts.append(f"{summary.world_size} processes (torchrun)")
        st.caption(" · ".join(parts))
        marks_line = proposals_view.counts_line(summary.run)
        if marks_line:
            st.caption(marks_line)
        if summary.state == protocol.FINISHED and summary.result:
            st.markdown(result_line(summary.result))
        common.show_trouble(summary)
        with st.container(horizontal=True):
            common.link("metrics", "Metrics", run=summary.name, icon=":material/monitoring:")
            common.link("review", "Review", run=summary.name, icon=":material/draw:")
            common.link("learning", "Did it learn?", run=summary.name, icon=":material/school:")
            if summary.can_stop and st.button("Stop", icon=":material/stop:", key=f"stop-{summary.name}",
                                              help="The trainer saves its state and stops; you can resume later."):
                try:
                    launcher.stop_run(summary.run)
                except launcher.LaunchError as e:
                    common.action_failed(summary.name, "could not be stopped", str(e))
                    st.rerun(scope="fragment")
                else:
                    st.toast(f"Stopping {summary.name}…", icon=":material/stop:")
                    time.sleep(0.5)
                    st.rerun(scope="fragment")
        if summary.state in (protocol.TRAINING, run_reader.STARTING, protocol.FINISHED):
            common.log_tail(summary)
        if summary.state in (protocol.FAILED, protocol.STOPPED):
            delete_panel(summary)


def delete_panel(summary: run_reader.RunSummary) -> None:
    """Delete a failed or stopped run, after asking: its checkpoints and answers go with it."""
    asking = st.session_state.get("confirm-delete") == summary.name
    if not asking:
        if st.button("Delete this run…", key=f"delete-{summary.name}", icon=":material/delete:"):
            st.session_state["confirm-delete"] = summary.name
            st.rerun()
        return
    st.warning(f"Delete **{summary.name}** and all its files (checkpoints, metrics, answers)? This cannot be undone.",
               icon=":material/delete_forever:")
    with st.container(horizontal=True):
        confirmed = st.button("Delete", key=f"confirm-delete-{summary.name}", type="primary")
        cancelled = st.button("Cancel", key=f"cancel-delete-{summary.name}")
    if confirmed:
        try:
            launcher.delete_run(summary.run)
        except (launcher.LaunchError, protocol.ProtocolError, OSError) as e:
            common.action_failed(summary.name, "was not deleted", str(e))
            st.session_state.pop("confirm-delete", None)
            st.rerun()
        st.toast(f"Deleted {summary.name}", icon=":material/delete:")
    if confirmed or cancelled:
        st.session_state.pop("confirm-delete", None)
        st.rerun()


def result_line(result: dict) -> str:
    """The trainer's final summary in words."""
    text = (f"Finished. Best epoch {result.get('best_epoch', '–')}: validation loss "
            f"{common.fmt(result.get('best_val_loss'))}, accuracy {common.percent(result.get('best_val_acc'))}")
    if "test_acc" in result:
        text += f"; test accuracy {common.percent(result.get('test_acc'))}"
    if "test_consistent_acc" in result:
        text += f" ({common.percent(result.get('test_consistent_acc'))} where the shortcut still holds)"
    n = result.get("n_feedback", 0)
    return text + f". {n} {'image' if n == 1 else 'images'} got feedback."


def new_run_form() -> None:
    empty = not run_reader.list_run_dirs(common.runs_dir())
    with st.expander("Start a new run", expanded=empty, icon=":material/add_circle:"):
        try:
            with st.spinner("Asking the trainer for its options…"):
                options = launcher.trainer_options()
        except launcher.LaunchError as e:
            st.error(f"The form is not available: {e}")
            return
        choices, defaults = options["choices"], options["defaults"]
        with st.form("new-run", border=False):
            left, right = st.columns(2)
            with left:
                title = st.text_input("Run name", placeholder="e.g. digits-first-try",
                                      help="The folder the run is saved in. Leave empty for data set and time.")
                dataset = st.selectbox("Data set", choices["dataset"],
                                       index=choices["dataset"].index(defaults["dataset"]))
                data_dir = st.text_input(
                    "Data folder", placeholder="only for data sets on disk",
                    help=f"The folder holding the data set. The generated sets ({', '.join(GENERATED_DATASETS)}) "
                         "need none; see datasets/README.md for the others.")
                model = st.selectbox("Model", _with_first(MODELS, defaults["model"]), accept_new_options=True,
                                     help="Any timm architecture name; hitl_cnn is a small, fast network.")
                epochs = st.number_input("Epochs", 1, 1000, defaults["epochs"])
                processes = st.number_input(
                    "Processes", 1, launcher.MAX_PROCESSES, 1,
                    help="More than 1 trains with torchrun on this machine, one process per GPU (or CPU share); "
                         "the batch size is split between them. See docs/distributed.md.")
                annotator = st.radio("Who answers the questions", choices["annotator"],
                                     index=choices["annotator"].index(defaults["annotator"]),
                                     format_func=lambda a: ANNOTATORS.get(a, a))
            with right:
                sampling = st.selectbox("Which images to ask about", choices["sampling"],
                                        index=choices["sampling"].index(defaults["sampling"]),
                                        format_func=lambda s: SAMPLING.get(s, s))
                queries = st.number_input("Images to ask about per epoch", 0, 500, defaults["queries_per_epoch"],
                                          help="The first round asks at least three: the trainer needs three marks "
                                               "to look for what you marked on the images you did not mark.")
                start = st.number_input("First epoch that asks", 0, 1000, defaults["query_start_epoch"],
                                        help="0 asks once before training too: marks given then keep the model "
                                             "from learning the shortcut at all.")
                feedback_method = st.selectbox(
                    "How your marks teach", choices["feedback_method"],
                    index=choices["feedback_method"].index(defaults["feedback_method"]),
                    format_func=lambda f: FEEDBACK.get(f, f),
                    help="The default shows the model your marked images with what you marked replaced, finds "
                         "the same thing on the other images and replaces it there too; where it cannot find what "
                         "you marked by itself, it also penalises the model for looking there (docs/learning.md).")
                proposals = st.number_input(
                    "Images to propose per round", 0, 200, FORM_PROPOSALS,
                    help="Once three images carry a small mark, the trainer looks for the same artefact on the "
                         "other training images and proposes them with a mask, for you to confirm in bulk on the "
                         "Review page. 0 proposes none.")
                budget = st.number_input(
                    "Images to ask about in all", 0, 100000, 0,
                    help="Once this many images were asked about, rounds bring only proposals to confirm: "
                         "mark ten, confirm the rest (docs/learning.md). 0: no limit.")
                weight = st.number_input(
                    "Penalty weight λ", 0.0, 10000.0, defaults["penalty_weight"], step=1.0,
                    placeholder="the method's own: 1 for the default, 10 for the penalty or both",
                    help="How strongly the penalty pushes the model away from the regions you mark. Empty: the "
                         "method's own. Counterexamples alone have none.")
                saliency = st.selectbox("Saliency method", choices["saliency"],
                                        index=choices["saliency"].index(defaults["saliency"]),
                                        help="How the dashboard shows what the model looked at.")
                extra = st.text_input("More trainer options", placeholder="e.g. --batch-size 32 --image-size 64",
                                      help="Any other flag of `python -m trainer --help`, spelled in full, except "
                                           "the run name and runs folder (set above).")
            submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
        if submitted:
            start_from_form(launcher.RunRequest(
                title=title.strip() or launcher.default_title(dataset), dataset=dataset, data_dir=data_dir,
                model=str(model or defaults["model"]).strip(), epochs=int(epochs), sampling=sampling,
                queries_per_epoch=int(queries), query_start_epoch=int(start), penalty_weight=None if weight is None else float(weight),
                saliency=saliency, annotator=annotator, feedback_method=feedback_method,
                proposals=int(proposals), query_budget=int(budget), processes=int(processes)), extra)


def start_from_form(request: launcher.RunRequest, extra: str) -> None:
    """Start the trainer and say "started" only once it runs; an early exit shows its error line."""
    try:
        request.extra_args = launcher.parse_extra_args(extra)
        run = launcher.start_run(common.runs_dir(), request, allowed_roots=common.allowed_roots())
    except launcher.LaunchError as e:
        st.error(str(e), icon=":material/error:")
        return
    with st.spinner(f"Starting {run.name}…"):
        outcome = launcher.await_start(run)
    if outcome.state == "running":
        st.success(f"Started **{run.name}**; it is in the list above. The trainer's messages go to `{run.log}`.",
                   icon=":material/check_circle:")
    elif outcome.state == "starting":
        st.info(f"**{run.name}** is starting (loading its model and data); it shows in the list above. The "
                f"trainer's messages go to `{run.log}`.", icon=":material/hourglass_top:")
    else:
        st.error(f"**{run.name}** did not start: {outcome.message}", icon=":material/error:")


def _with_first(options: list[str], first: str) -> list[str]:
    return [first, *[o for o in options if o != first]]


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
