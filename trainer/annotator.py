"""The simulated annotator: answers each query from the data set's ground-truth confounder masks,
writing the same mask file a person writes in the dashboard (as the explanatory-interactive-learning
literature simulates users). Runs in-process (``--annotator oracle``) or as its own command watching a
run directory (``hitl-oracle RUN``), so both paths go through the same protocol.

People do not mark pixel-exact regions, so the annotator has styles (``--oracle-style``): ``exact``
(the ground truth), ``box`` (its bounding rectangle), ``loose`` (that rectangle with each edge moved
by a random −1…+2 margins, a margin being 1/32 of the image side: mostly larger, sometimes cutting
into the region), ``partial`` (the region with a random 30–50% strip from one side left unmarked);
and ``--oracle-skip p`` skips a random share p of the queries.

Proposals (``--proposals``, trainer/proposals.py) are answered too: accepted, with the proposed mask as
it is, when it covers the image's ground-truth confounder with IoU >= ACCEPT_IOU; rejected otherwise
(also on images without a confounder)."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import protocol
from .data import DataError, Split


STYLES = ("exact", "box", "loose", "partial")
ACCEPT_IOU = 0.5


def mask_iou(a, b) -> float:
    """Intersection over union of two bool masks (numpy); 0 when both are empty."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


class OracleAnnotator:
    """Marks the ground-truth confounder of each queried image as "must not rely on", drawn in the
    given style; images without a confounder, and a random ``skip`` share of the rest, are skipped.
    The random choices are a function of (seed, epoch, image), so a resumed run answers alike."""

    def __init__(self, train: Split, style: str = "exact", skip: float = 0.0, seed: int = 0):
        if not train.has_gt_masks:
            raise DataError("the simulated annotator needs ground-truth masks, and this data set has none "
                            "(use a generated set, or a csv data set with a mask column)")
        if style not in STYLES:
            raise DataError(f"oracle style must be one of {', '.join(STYLES)}, got {style!r}")
        if not 0 <= skip < 1:
            raise DataError(f"oracle skip share must be in [0, 1), got {skip}")
        self.train, self.style, self.skip, self.seed = train, style, skip, seed

    def draw(self, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ground-truth mask as this annotator draws it."""
        if self.style == "exact":
            return mask
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        h, w = mask.shape
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        out = torch.zeros_like(mask)
        if self.style == "box":
            out[y0:y1, x0:x1] = True
        elif self.style == "loose":
            margin = max(1, round(max(h, w) / 32))
            move = torch.randint(-margin, 2 * margin + 1, (4,), generator=g).tolist()
            y0, y1 = max(0, y0 - move[0]), min(h, y1 + move[1])
            x0, x1 = max(0, x0 - move[2]), min(w, x1 + move[3])
            out[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)] = True
        else:  # partial: a strip along one side of the region left unmarked
            out = mask.clone()
            share = 0.3 + 0.2 * float(torch.rand((), generator=g))
            cut_y, cut_x = max(1, round((y1 - y0) * share)), max(1, round((x1 - x0) * share))
            strips = [(slice(y0, y0 + cut_y), slice(None)), (slice(y1 - cut_y, y1), slice(None)),
                      (slice(None), slice(x0, x0 + cut_x)), (slice(None), slice(x1 - cut_x, x1))]
            out[strips[int(torch.randint(4, (), generator=g))]] = False
        return out

    def __call__(self, run: protocol.RunDir, epoch: int) -> bool:
        manifest = protocol.read_manifest(run, epoch)
        if manifest is None:
            return False
        answers = []
        for q in manifest["queries"]:
            g = torch.Generator().manual_seed((self.seed * 1009 + epoch) * 100003 + q["index"])
            mask = self.train.gt_mask(q["index"])
            skipped = self.skip > 0 and float(torch.rand((), generator=g)) < self.skip
            if mask is not None and mask.any() and not skipped:
                mask = self.draw(mask.cpu().bool(), g).numpy()
                answers.append(protocol.QueryFeedback(q["query_id"], q["index"], protocol.ACTION_MASK, forbidden=mask))
            else:
                answers.append(protocol.QueryFeedback(q["query_id"], q["index"], protocol.ACTION_SKIP))
        return protocol.submit_feedback(run, epoch, "oracle", answers + self.judge_proposals(run, epoch))

    def judge_proposals(self, run: protocol.RunDir, epoch: int) -> list[protocol.QueryFeedback]:
        """Accept each proposal whose mask matches the ground truth (IoU >= ACCEPT_IOU), reject the rest."""
        found = protocol.read_proposals(run, epoch)
        answers = []
        for p in found["entries"] if found else ():
            proposed = protocol.read_proposal_mask(run, epoch, p.proposal_id)
            truth = self.train.gt_mask(p.index)
            good = truth is not None and mask_iou(proposed, truth.cpu().bool().numpy()) >= ACCEPT_IOU
            answers.append(protocol.QueryFeedback(
                p.proposal_id, p.index, protocol.ACTION_MASK if good else protocol.ACTION_SKIP,
                forbidden=proposed if good else None, source=protocol.SOURCE_PROPOSED))
        return answers


def watch(run: protocol.RunDir, poll: float = 0.5, log=print) -> int:
    """Answer every pending queue of ``run`` until it finishes, fails or stops."""
    from .config import TrainConfig
    from .data import build_run_dataset

    cfg = TrainConfig.from_dict(protocol.read_config(run))
    data = build_run_dataset(cfg)
    oracle = OracleAnnotator(data.train, cfg.oracle_style, cfg.oracle_skip, cfg.seed)
    answered = 0
    while True:
        epoch = protocol.pending_epoch(run)
        if epoch is not None and oracle(run, epoch):
            answered += 1
            log(f"answered the queue of epoch {epoch}")
        state = protocol.read_status(run)["state"]
        if state in (protocol.FINISHED, protocol.FAILED, protocol.STOPPED, protocol.STALE):
            return answered
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hitl-oracle", description="Answer a run's queries from ground-truth masks.")
    p.add_argument("run", help="run directory, or a run name under --runs-dir")
    p.add_argument("-md", "--runs-dir", default="checkpoints")
    p.add_argument("--once", action="store_true", help="answer the pending queue (if any) and exit")
    args = p.parse_args(argv)
    try:
        run = protocol.run_from_argument(args.run, args.runs_dir)
        if args.once:
            from .config import TrainConfig
            from .data import build_run_dataset
            cfg = TrainConfig.from_dict(protocol.read_config(run))
            data = build_run_dataset(cfg)
            epoch = protocol.pending_epoch(run)
            done = epoch is not None and OracleAnnotator(data.train, cfg.oracle_style, cfg.oracle_skip,
                                                         cfg.seed)(run, epoch)
            print(f"answered the queue of epoch {epoch}" if done else "no pending queue")
            return 0
        watch(run)
        return 0
    except (DataError, protocol.ProtocolError) as e:
        print(f"hitl-oracle: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
