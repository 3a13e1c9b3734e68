"""Proposals ("mark once, confirm many"): the ranking on a real, briefly trained model, the files in the
run directory, the mask file's proposal answers, the simulated reviewer, and the Review page's grid."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from trainer import protocol
from trainer.annotator import OracleAnnotator
from trainer.batches import gather
from trainer.config import TrainConfig
from trainer.data import TensorSplit
from trainer.feedback import FeedbackSet
from trainer.counterexamples import Counterexamples
from trainer.proposals import HELD_OUT_FOLDS, MIN_MARKED, candidates_for, find_artefacts, propose
from trainer.teaching import missed_shares
from trainer.train import Trainer

H = W = 32
ANYWHERE = {"sticker": "anywhere", "sticker_share": 0.5, "n_images": 480}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """hitl_cnn after one epoch on 300 synthetic-lesions images, half of them with a sticker somewhere."""
    torch.set_num_threads(2)
    cfg = TrainConfig(dataset="synthetic-lesions", epochs=1, annotator="none", seed=0, device="cpu",
                      runs_dir=str(tmp_path_factory.mktemp("runs")), title="tiny", dataset_options=ANYWHERE,
                      track_images=0)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    return trainer


def test_ranking_puts_artefact_images_first_after_three_marks(trained):
    train = trained.data.train
    carries = train.masks.flatten(1).any(1)
    assert 0.3 < carries.float().mean() < 0.7
    feedback = FeedbackSet(len(train), 64, 64)
    take = lambda i: gather(train, i)  # noqa: E731
    marked = torch.nonzero(carries).flatten()[:MIN_MARKED].tolist()
    for i in marked[:-1]:
        feedback.add(i, train.masks[i])
    assert propose(trained.model, feedback, 10, torch.device("cpu"), take) == []  # two marks: nothing yet
    feedback.add(marked[-1], train.masks[marked[-1]])
    found = propose(trained.model, feedback, 10, torch.device("cpu"), take)
    # up to 10: an image whose finer map has no position on the marked side gets no mask and is left out
    # (6 of 10 since batch-norm statistics are measured after each epoch, 9 before: an open question,
    # docs/learning.md, batch-norm statistics)
    assert 5 <= len(found) <= 10 and not set(p.index for p in found) & set(marked)
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    hits = int(carries[[p.index for p in found]].sum())
    assert hits >= len(found) - 1, hits  # while only half the images carry a sticker
    ious = [iou(p.mask, train.masks[p.index].numpy()) for p in found if carries[p.index]]
    assert np.mean(ious) >= 0.5, ious
    # localised on each image: the masks are not one shape copied around
    assert len({tuple(np.argwhere(p.mask).min(0)) for p in found}) > 5


def test_the_marked_artefact_is_found_and_filled_where_it_is_on_images_nobody_marked(trained):
    """--counterexample-carry found: three marks, and the sticker is found wherever it sits on the other
    images and filled there, only there, on every image it is found on (not only on the share that gets
    recurring marks)."""
    train = trained.data.train
    carries = train.masks.flatten(1).any(1)
    feedback = FeedbackSet(len(train), 64, 64)
    take = lambda i: gather(train, i)  # noqa: E731
    marked = torch.nonzero(carries).flatten()[:MIN_MARKED]
    for i in marked.tolist():
        feedback.add(i, train.masks[i])
    rest = candidates_for(feedback)
    found, masks = find_artefacts(trained.model, feedback, take, rest, torch.device("cpu"))
    assert not set(found.tolist()) & set(marked.tolist())
    precision, recall = carries[found].float().mean(), carries[found].sum() / carries[rest].sum()
    # recall 0.48 after this one epoch since batch-norm statistics are measured after each epoch (0.96
    # before); precision 1.0 both ways
    assert precision >= 0.9 and recall >= 0.4, (precision, recall)
    ious = [iou(m.numpy(), train.masks[i].numpy()) for i, m in zip(found.tolist(), masks) if carries[i]]
    assert np.mean(ious) >= 0.5, np.mean(ious)

    ce = Counterexamples(feedback, take, share=0.1, fill="region", transfer=0.1, carry="found")
    ce.carry_found(len(train), found, masks)
    batch = found[:32]
    x, y = take(batch)
    xb, yb, idx, _ = ce.extend(x, y, batch, torch.Generator().manual_seed(0))
    inside = masks[:32][:, None].expand_as(x)
    assert torch.equal(xb[:32][~inside], x[~inside])                     # nothing else touched
    changed = (xb[:32] != x).flatten(1).any(1)
    assert changed.float().mean() >= 0.9 and torch.equal(yb[:32], y) and torch.equal(idx[:32], batch)
    ce.carry_found(len(train), found[:0], masks[:0])                      # nothing found: as without
    recurring_only = Counterexamples(feedback, take, share=0.1, fill="region", transfer=0.1)
    same = [c.extend(x, y, batch, torch.Generator().manual_seed(1))[0] for c in (ce, recurring_only)]
    assert torch.equal(*same)
    with pytest.raises(ValueError, match="carry must be one of"):
        Counterexamples(feedback, take, share=0.1, carry="everywhere")


def test_auto_weighs_a_mark_the_finder_finds_by_itself_lightly_and_one_it_cannot_fully(trained):
    """--feedback auto: each mark is localised by a finder fitted on the other marks; the sticker, found
    again, leaves little to penalise, a box on plain skin (no other mark looks like it) all of it, and so
    does any image nobody marked."""
    train = trained.data.train
    carries = train.masks.flatten(1).any(1)
    feedback = FeedbackSet(len(train), 64, 64)
    stickers = torch.nonzero(carries).flatten()[:20]
    for i in stickers.tolist():
        feedback.add(i, train.masks[i])
    plain = int(torch.nonzero(~carries).flatten()[0])
    box = torch.zeros(64, 64, dtype=torch.bool)
    box[20:30, 20:30] = True
    feedback.add(plain, box)
    shares = missed_shares(trained.model, feedback, lambda i: gather(train, i), len(train), torch.device("cpu"))
    assert (shares[stickers] <= 0.2).float().mean() >= 0.75, shares[stickers]  # the sticker but a rim, mostly
    assert shares[plain] >= 0.8, shares[plain]
    assert torch.all(shares[candidates_for(feedback)] == 1)
    few = FeedbackSet(len(train), 64, 64)  # too few marks to hold any out: the finder carries nothing either
    for i in stickers[:HELD_OUT_FOLDS - 1].tolist():
        few.add(i, train.masks[i])
    assert torch.all(missed_shares(trained.model, few, lambda i: gather(train, i), len(train), torch.device("cpu")) == 1)


def test_synthetic_lesions_options_leave_the_default_set_alone():
    from trainer.data import build_dataset
    from trainer.data.base import DataRequest, DataError

    default = build_dataset("synthetic-lesions", DataRequest(None, 64, 0, options={"n_images": 480}))
    anywhere = build_dataset("synthetic-lesions", DataRequest(None, 64, 0, options=ANYWHERE))
    assert default.train.masks.flatten(1).any(1).all()
    assert torch.equal(default.train.labels, anywhere.train.labels)
    with pytest.raises(DataError, match="sticker"):
        build_dataset("synthetic-lesions", DataRequest(None, 64, 0, options={"sticker": "middle"}))


@pytest.mark.parametrize("options", [{"artefact": "ruler"}, {"artefact": "text"},
                                     {"second_artefact": "ruler"}, {"artefact": "text", "sticker_share": 0.8}])
def test_other_shapes_of_shortcut_carry_the_label_and_their_masks_cover_them(options):
    """Issue 25: a thin ruler, a text-like label, two artefacts, an artefact on 80% of the images: the
    lesions are the default set's; what differs from it lies inside the ground-truth masks (and the
    default's sticker, where the sticker was replaced); train and validation carry the label's colour."""
    from trainer.data import build_dataset
    from trainer.data.base import DataRequest

    base = {"n_images": 160}
    default = build_dataset("synthetic-lesions", DataRequest(None, 64, 0, options=base))
    other = build_dataset("synthetic-lesions", DataRequest(None, 64, 0, options={**base, **options}))
    assert torch.equal(default.train.labels, other.train.labels)
    changed = (default.train.images != other.train.images).any(1)
    allowed = other.train.masks | default.train.masks
    assert changed.any() and not (changed & ~allowed).any()
    carries = other.train.masks.flatten(1).any(1)
    share = options.get("sticker_share", 1.0)
    assert carries.float().mean() == pytest.approx(share, abs=0.1)
    assert (other.train.masks.flatten(1).float().mean(1)[carries] < 0.15).all()  # thin, small: an artefact's
    # the consistent test copy differs from the decorrelated one only inside the masks
    moved = (other.test.images != other.test_consistent.images).any(1)
    assert not (moved & ~other.test.masks).any()


# --------------------------------------------------------------------------- run directory and mask file

def write_three_proposals(run: protocol.RunDir, epoch: int, first_index: int, label) -> tuple[list, list]:
    """Proposals p000-p002 of training images first_index.., proposal i's mask an 8×8 square at (4i, 4i),
    its label ``label(i)``, with their index written last; the masks and the entries."""
    masks, entries = [], []
    for i in range(3):
        mask = np.zeros((H, W), bool)
        mask[4 * i:4 * i + 8, 4 * i:4 * i + 8] = True
        masks.append(mask)
        protocol.write_proposal(run, epoch, f"p{i:03d}", png_bytes(), mask)
        entries.append(protocol.ProposalEntry(f"p{i:03d}", first_index + i, 3.0 - i, label(i), H, W))
    protocol.write_proposals(run, epoch, entries, method="cav", marked=3)
    return masks, entries


def queue_with_proposals(root, epoch: int = 1) -> tuple[protocol.RunDir, dict, list[np.ndarray]]:
    """A queue of one query and three proposals; proposal i's mask is an 8×8 square at (4i, 4i)."""
    run = protocol.RunDir(root / "run")
    protocol.write_config(run, {"title": "run"})
    masks, _ = write_three_proposals(run, epoch, first_index=10, label=lambda i: i % 2)
    protocol.write_query_image(run, epoch, "q000", png_bytes(), np.zeros((H, W), np.float32))
    protocol.write_manifest(run, epoch, {"class_names": ["a", "b"], "queries": [
        {"query_id": "q000", "index": 5, "true_label": 0, "predicted_label": 1, "probabilities": [0.4, 0.6],
         "entropy": 0.6, "height": H, "width": W}]})
    return run, protocol.read_manifest(run, epoch), masks


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_proposals_round_trip_through_the_protocol(tmp_path):
    run, manifest, masks = queue_with_proposals(tmp_path)
    found = protocol.read_proposals(run, 1)
    assert [e.index for e in found["entries"]] == [10, 11, 12] and found["marked"] == 3
    assert np.array_equal(protocol.read_proposal_mask(run, 1, "p001"), masks[1])
    assert protocol.read_proposal_image(run, 1, "p002").shape == (H, W, 3)
    assert protocol.read_proposals(run, 2) is None
    drawn = np.zeros((H, W), bool)
    drawn[20:, 20:] = True
    sent = [protocol.QueryFeedback("q000", 5, protocol.ACTION_MASK, forbidden=drawn),
            protocol.QueryFeedback("p000", 10, protocol.ACTION_MASK, forbidden=masks[0], source="proposed"),
            protocol.QueryFeedback("p001", 11, protocol.ACTION_SKIP, source="proposed")]
    assert protocol.submit_feedback(run, 1, "human", sent)
    doc = json.loads(run.feedback_file(1).read_text())
    assert [p["action"] for p in doc["proposals"]] == ["accept", "reject"]
    assert all(p["source"] == "proposed" for p in doc["proposals"])
    answers = protocol.load_feedback(run, 1, manifest)
    assert [(a.query_id, a.action, a.source) for a in answers] == [
        ("q000", "mask", "drawn"), ("p000", "mask", "proposed"), ("p001", "skip", "proposed")]
    assert np.array_equal(answers[1].forbidden, masks[0])
    feedback = FeedbackSet(20, H, W)
    counts = feedback.apply(answers)
    assert (counts["masked"], counts["proposed"], counts["rejected"]) == (1, 1, 1)
    assert feedback.indices.tolist() == [5, 10]


def test_old_mask_files_still_parse_and_bad_proposal_answers_are_refused(tmp_path):
    run, manifest, masks = queue_with_proposals(tmp_path)
    old = {"format": 1, "epoch": 1, "annotator": "human", "queries": [{"query_id": "q000", "index": 5, "action": "skip"}]}
    assert [a.source for a in protocol.parse_feedback(old, manifest)] == ["drawn"]
    good = protocol.encode_mask(masks[0])
    proposals = protocol.read_proposals(run, 1)
    bad = [
        ({"proposal_id": "p009", "index": 10, "action": "accept", "forbidden": good}, "unknown proposal_id"),
        ({"proposal_id": "p000", "index": 11, "action": "accept", "forbidden": good}, "does not match"),
        ({"proposal_id": "p000", "index": 10, "action": "accept"}, "without the accepted mask"),
        ({"proposal_id": "p000", "index": 10, "action": "maybe"}, "unknown action"),
        ({"proposal_id": "p000", "index": 10, "action": "reject", "source": "drawn"}, "source"),
        ({"proposal_id": "p000", "index": 10, "action": "accept",
          "forbidden": {"height": 8, "width": 8, "rle": [64]}}, "does not match the image size"),
    ]
    for answer, message in bad:
        with pytest.raises(protocol.ProtocolError, match=message):
            protocol.parse_feedback({**old, "proposals": [answer]}, manifest, proposals)
    twice = {"proposal_id": "p001", "index": 11, "action": "reject"}
    with pytest.raises(protocol.ProtocolError, match="answered twice"):
        protocol.parse_feedback({**old, "proposals": [twice, twice]}, manifest, proposals)
    with pytest.raises(protocol.ProtocolError, match="the queue has none"):
        protocol.parse_feedback({**old, "proposals": [twice]}, manifest, None)
    # through load_feedback the file's name is in the message, and the trainer refuses it as a whole
    protocol.submit_feedback(run, 1, "x", [])
    doc = json.loads(run.feedback_file(1).read_text())
    run.feedback_file(1).write_text(json.dumps({**doc, "proposals": "all"}))
    with pytest.raises(protocol.ProtocolError, match=r"feedback/epoch_001.json: 'proposals' must be a list"):
        protocol.load_feedback(run, 1, manifest)


def test_oracle_accepts_proposals_by_iou(tmp_path):
    run, manifest, masks = queue_with_proposals(tmp_path)
    truth = torch.zeros(20, H, W, dtype=torch.bool)
    truth[10] = torch.from_numpy(masks[0])                       # the proposal is exact: IoU 1
    truth[11, 4:12, 4:8] = True                                  # half of proposal 1's square: IoU 0.5
    truth[12, 20:28, 20:28] = True                               # elsewhere: IoU 0
    truth[5, 0:4, 0:4] = True
    split = TensorSplit("train", torch.zeros(20, 3, H, W, dtype=torch.uint8), torch.zeros(20), truth)
    assert OracleAnnotator(split)(run, 1)
    answers = protocol.load_feedback(run, 1, manifest)
    by_id = {a.query_id: a for a in answers}
    assert by_id["q000"].action == "mask" and by_id["q000"].source == "drawn"
    assert [(by_id[p].action, by_id[p].source) for p in ("p000", "p001", "p002")] == [
        ("mask", "proposed"), ("mask", "proposed"), ("skip", "proposed")]
    assert np.array_equal(by_id["p001"].forbidden, masks[1])  # the proposed mask as it is, not the truth


def test_an_oracle_run_writes_answers_and_applies_proposals(tmp_path):
    """A whole run: prior marks, a round that proposes, the oracle's answers applied."""
    torch.set_num_threads(2)
    cfg = TrainConfig(dataset="synthetic-lesions", epochs=1, annotator="oracle", seed=1, device="cpu",
                      runs_dir=str(tmp_path), title="run", dataset_options=ANYWHERE, track_images=0,
                      queries_per_epoch=4, proposals_per_epoch=6, prior_masks="12", query_start_epoch=0)
    logs = []
    trainer = Trainer(cfg, log=logs.append)
    before = len(trainer.feedback)
    trainer.fit()
    found = protocol.read_proposals(trainer.run, 0)
    assert found is not None and found["marked"] >= MIN_MARKED and 1 <= len(found["entries"]) <= 6
    queued = {q["index"] for q in protocol.read_manifest(trainer.run, 0)["queries"]}
    assert not queued & {e.index for e in found["entries"]}
    answers = protocol.load_feedback(trainer.run, 0, protocol.read_manifest(trainer.run, 0))
    accepted = [a for a in answers if a.source == "proposed" and a.action == "mask"]
    assert accepted, [a.action for a in answers]
    assert all(int(trainer.feedback.position[a.index]) >= 0 for a in accepted)
    assert len(trainer.feedback) > before
    assert any("proposals from" in line for line in logs) and any("accepted proposals" in line for line in logs)


def test_once_the_query_budget_is_spent_rounds_bring_only_proposals(tmp_path):
    """--query-budget 4: the first round asks about 4 images, the next asks nothing to draw and proposes
    what those marks found; with nothing left to ask and no proposals, no round happens at all."""
    torch.set_num_threads(2)
    options = {"sticker": "anywhere", "n_images": 480}
    cfg = TrainConfig(dataset="synthetic-lesions", epochs=2, annotator="oracle", seed=0, device="cpu",
                      runs_dir=str(tmp_path), title="budget", dataset_options=options, track_images=0,
                      queries_per_epoch=4, query_budget=4, proposals_per_epoch=6)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    run = trainer.run
    assert protocol.queue_epochs(run) == [0, 1]
    assert len(protocol.read_manifest(run, 0)["queries"]) == 4 and protocol.read_manifest(run, 1)["queries"] == []
    answers = protocol.load_feedback(run, 1, protocol.read_manifest(run, 1))
    assert answers and all(a.source == protocol.SOURCE_PROPOSED for a in answers)
    assert protocol.pending_epoch(run) is None
    # the sticker moves, so no mark recurs at one place: the marked artefact is carried where it is found
    assert all(r["artefacts_found"] >= 100 for r in protocol.read_metrics(run)), protocol.read_metrics(run)

    trainer.cfg.epochs = 3  # had the run a third epoch: its round only if it may propose
    assert trainer.queries.queries_left(2) == 0 and trainer.queries.is_due(2)
    trainer.cfg.proposals_per_epoch = 0
    assert not trainer.queries.is_due(2)  # nothing to ask after the budget: no round, no wait


def test_a_queue_that_asks_nothing_is_not_pending(tmp_path):
    run = protocol.RunDir(tmp_path / "run")
    protocol.write_manifest(run, 2, {"class_names": ["a", "b"], "queries": []})
    assert protocol.pending_epoch(run) is None
    write_three_proposals(run, 2, 0, lambda i: 0)
    assert protocol.pending_epoch(run) == 2


# --------------------------------------------------------------------------- the Review page (AppTest)

def test_review_page_shows_the_proposals_grid_and_sends_the_ticked_ones(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from test_dashboard import APP, OPTIONS, make_queue, make_run, rect

    from dashboard import launcher
    from dashboard.views import canvas

    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(launcher, "trainer_options", lambda: OPTIONS)
    monkeypatch.setattr(canvas, "draw_marks", lambda data, key, on_marks, on_command:
                        {"docs": {data["doc"]: {"ops": [rect(4, 8, 20, 16)], "revision": 1}}})
    run = make_run(tmp_path, "waiting", protocol.WAITING, epochs_done=1, waiting_epoch=1)
    masks, entries = write_three_proposals(run, 1, first_index=200, label=lambda i: 5)
    manifest = make_queue(run, 1)

    at = AppTest.from_file(str(APP), default_timeout=30).run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert any("found 3 more images" in m.value for m in at.markdown)
    boxes = [c for c in at.checkbox if c.key.startswith("proposal-")]
    assert [c.value for c in boxes] == [True, True, True]
    assert not any("cannot be shown" in c.value for c in at.caption)
    from dashboard.views import proposals as proposals_view
    picture = np.asarray(proposals_view.thumbnail(run, 1, entries[1]))
    edge = np.all(picture == proposals_view.OUTLINE_EDGE, axis=-1)
    inside = np.all(picture == proposals_view.OUTLINE_INSIDE, axis=-1)
    scale = proposals_view.THUMB // H  # the outline follows the mask's edge: rows 4..11 of 32, enlarged
    assert edge.any() and np.argwhere(edge).min(0).tolist() == [4 * scale, 4 * scale]
    assert inside.any() and np.argwhere(inside).min(0).tolist() == [4 * scale + 1, 4 * scale + 1]
    at.button(key="proposals-reject-1").click().run()
    assert [c.value for c in at.checkbox if c.key.startswith("proposal-")] == [False] * 3
    at.button(key="proposals-accept-1").click().run()
    next(c for c in at.checkbox if c.key.endswith("p001")).uncheck().run()
    assert any("**2** accepted · **1** rejected" in c.value for c in at.caption)
    again = AppTest.from_file(str(APP), default_timeout=30).run()  # a reload: the untick is kept
    again.switch_page("views/review.py").run()
    assert [c.value for c in again.checkbox if c.key.startswith("proposal-")] == [True, False, True]
    at.button(key="submit-1").click().run()
    assert not at.exception, at.exception
    sent = protocol.load_feedback(run, 1, manifest)
    proposed = [(a.query_id, a.action) for a in sent if a.source == "proposed"]
    assert proposed == [("p000", "mask"), ("p001", "skip"), ("p002", "mask")]
    assert np.array_equal(next(a for a in sent if a.query_id == "p002").forbidden, masks[2])

    assert proposals_view.mark_counts(run) == {"drawn": 1, "proposed": 2, "rejected": 1}
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    assert any("**1** drawn · **2** proposed and accepted" in c.value for c in at.caption)
    at.switch_page("views/metrics.py").run()
    assert not at.exception, at.exception
    assert any("**1** drawn · **2** proposed and accepted" in c.value for c in at.caption)


def test_a_round_with_only_proposals_shows_the_grid_and_sends_them(tmp_path, monkeypatch):
    """Once --query-budget is spent a queue has no query: the page shows the grid (a proposal can still
    be opened on the canvas) and sends the proposals' answers."""
    from streamlit.testing.v1 import AppTest
    from test_dashboard import APP, OPTIONS, make_run, rect

    from dashboard import launcher
    from dashboard.views import canvas

    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(launcher, "trainer_options", lambda: OPTIONS)
    monkeypatch.setattr(canvas, "draw_marks", lambda data, key, on_marks, on_command:
                        {"docs": {data["doc"]: {"ops": [rect(20, 20, 28, 28)], "revision": 1}}})
    run = make_run(tmp_path, "waiting", protocol.WAITING, epochs_done=2, waiting_epoch=2)
    masks, _ = write_three_proposals(run, 2, first_index=200, label=lambda i: i % 2)
    protocol.write_manifest(run, 2, {"class_names": ["a", "b"], "queries": []})
    manifest = protocol.read_manifest(run, 2)
    assert protocol.pending_epoch(run) == 2

    at = AppTest.from_file(str(APP), default_timeout=30).run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert any("nothing to draw" in m.value for m in at.markdown)
    assert any("found 3 more images" in m.value for m in at.markdown)
    at.button(key="proposal-edit-2-p002").click().run()  # opened on the canvas, where a mark is added
    assert not at.exception, at.exception
    assert at.button(key="proposal-back-2").label == "Back to the proposals"
    at.button(key="submit-2").click().run()
    assert not at.exception, at.exception
    sent = protocol.load_feedback(run, 2, manifest)
    assert [(a.query_id, a.action, a.source) for a in sent] == [(f"p00{i}", "mask", "proposed") for i in range(3)]
    assert np.array_equal(sent[0].forbidden, masks[0])
    # the canvas (here its stand-in) sends its whole list of marks: the corrected mask is what it drew
    assert sent[2].forbidden[20:28, 20:28].all() and not np.array_equal(sent[2].forbidden, masks[2])
    assert protocol.pending_epoch(run) is None


def test_rejected_proposals_are_remembered(tmp_path):
    from trainer.proposals import rejected_before

    run, manifest, masks = queue_with_proposals(tmp_path)
    assert rejected_before(run, [1]) == set()
    protocol.submit_feedback(run, 1, "human", [
        protocol.QueryFeedback("p000", 10, protocol.ACTION_MASK, forbidden=masks[0], source="proposed"),
        protocol.QueryFeedback("p002", 12, protocol.ACTION_SKIP, source="proposed")])
    assert rejected_before(run, [1, 2]) == {12}


def test_accepted_proposals_have_pictures_for_the_learning_page(tmp_path):
    from dashboard.views import proposals as proposals_view

    run, _, _ = queue_with_proposals(tmp_path)
    images = proposals_view.proposal_images(run)
    assert sorted(images) == [10, 11, 12] and images[10].shape == (H, W, 3)


def test_a_proposal_opened_on_the_canvas_is_sent_with_its_corrected_mask(tmp_path, monkeypatch):
    """Edit opens a proposal on the canvas with its proposed mask as marks; the corrections are kept
    in the draft (a fresh session finds them), tick the proposal and go into the mask file with source
    "proposed"; a proposal erased to nothing goes as rejected."""
    from streamlit.testing.v1 import AppTest
    from test_dashboard import APP, OPTIONS, make_queue, make_run, rect

    from dashboard import answers, launcher
    from dashboard.masks import Marks, apply_ops
    from dashboard.views import canvas

    shown, drawn = [], {}  # what the page gave the canvas; what the "browser" holds, by image
    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(launcher, "trainer_options", lambda: OPTIONS)
    monkeypatch.setattr(canvas, "draw_marks", lambda data, key, on_marks, on_command:
                        shown.append(data) or {"docs": {d: m for d, m in drawn.items() if d == data["doc"]}})
    run = make_run(tmp_path, "waiting", protocol.WAITING, epochs_done=1, waiting_epoch=1)
    masks, _ = write_three_proposals(run, 1, first_index=200, label=lambda i: 5)
    manifest = make_queue(run, 1)

    def review() -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=30).run()
        at.switch_page("views/review.py").run()
        assert not at.exception, at.exception
        return at

    def tick(at, proposal_id):
        return next(c for c in at.checkbox if c.key.endswith(proposal_id))

    at = review()
    assert not shown[-1]["doc"].endswith("proposal:p001")
    tick(at, "p001").uncheck().run()
    at.button(key="proposal-edit-1-p001").click().run()
    assert "Proposal #201: correct the proposed mark, then go back" in "\n".join(m.value for m in at.markdown)
    assert at.segmented_control(key="page-1").disabled
    opened = shown[-1]
    assert opened["doc"].endswith("|proposal:p001") and opened["revision"] == 0 and opened["picture"]
    assert np.array_equal(apply_ops(Marks.empty(H, W), opened["ops"]).forbidden, masks[1])

    # the reviewer erases the proposed square's left half and adds a square it missed
    corrected = masks[1].copy()
    corrected[:, :8] = False
    corrected[20:24, 20:24] = True
    drawn[opened["doc"]] = {"ops": opened["ops"] + [rect(0, 0, 8, 32, target="erase"), rect(20, 20, 24, 24)],
                            "revision": 1}
    at.run()
    assert tick(at, "p001").value  # corrected: accepted
    assert "proposal:p001" in answers.read_draft(run, 1)["answers"]
    assert any("corrected" in c.value for c in at.caption)
    at.button(key="proposal-back-1").click().run()
    assert not any("Proposal #201" in m.value for m in at.markdown)
    assert shown[-1]["doc"].endswith("|q000") and not at.segmented_control(key="page-1").disabled

    # a fresh session (a reload) finds the correction in the draft
    at = review()
    at.button(key="proposal-edit-1-p001").click().run()
    assert shown[-1]["revision"] == 1
    assert np.array_equal(apply_ops(Marks.empty(H, W), shown[-1]["ops"]).forbidden, corrected)
    # proposal p002 is erased to nothing: it goes as rejected
    at.button(key="proposal-edit-1-p002").click().run()
    drawn[shown[-1]["doc"]] = {"ops": shown[-1]["ops"] + [{"kind": "clear"}], "revision": 1}
    at.run()
    assert any("sent as rejected" in m.value for m in at.markdown)
    at.button(key="submit-1").click().run()
    assert not at.exception, at.exception
    sent = {a.query_id: a for a in protocol.load_feedback(run, 1, manifest) if a.source == "proposed"}
    assert [(p, sent[p].action) for p in ("p000", "p001", "p002")] == [("p000", "mask"), ("p001", "mask"),
                                                                       ("p002", "skip")]
    assert np.array_equal(sent["p000"].forbidden, masks[0])  # not opened: as proposed
    assert np.array_equal(sent["p001"].forbidden, corrected)
    assert not answers.draft_file(run, 1).exists()
