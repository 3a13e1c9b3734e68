"""The simulated annotator: answers each query from the data set's ground-truth confounder masks,
writing the same mask file a person writes in the dashboard (as the explanatory-interactive-learning
literature simulates users). Runs in-process (``--annotator oracle``) or as its own command watching a
run directory (``hitl-oracle RUN``), so both paths go through the same protocol."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import protocol
from .data import DataError, Split


class OracleAnnotator:
    """Marks the ground-truth confounder of each queried image as "must not rely on"; images
    without a confounder are skipped."""

    def __init__(self, train: Split):
        if not train.has_gt_masks:
            raise DataError("the simulated annotator needs ground-truth masks, and this data set has none "
                            "(use a generated set, or a csv data set with a mask column)")
        self.train = train

    def __call__(self, run: protocol.RunDir, epoch: int) -> bool:
        manifest = protocol.read_manifest(run, epoch)
        if manifest is None:
            return False
        answers = []
        for q in manifest["queries"]:
            mask = self.train.gt_mask(q["index"])
            mask = None if mask is None else mask.cpu().numpy().astype(bool)
            if mask is not None and mask.any():
                answers.append(protocol.QueryFeedback(q["query_id"], q["index"], protocol.ACTION_MASK, forbidden=mask))
            else:
                answers.append(protocol.QueryFeedback(q["query_id"], q["index"], protocol.ACTION_SKIP))
        return protocol.submit_feedback(run, epoch, "oracle", answers)


def watch(run: protocol.RunDir, poll: float = 0.5, log=print) -> int:
    """Answer every pending queue of ``run`` until it finishes, fails or stops."""
    from .config import TrainConfig
    from .data import DataRequest, build_dataset

    cfg = TrainConfig.from_dict(protocol.read_config(run))
    data = build_dataset(cfg.dataset, DataRequest(cfg.data_dir, cfg.image_size, cfg.seed, cfg.train_fraction,
                                                  cfg.val_fraction, cfg.dataset_options))
    oracle = OracleAnnotator(data.train)
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
    path = Path(args.run) if Path(args.run).is_dir() else Path(args.runs_dir) / args.run
    run = protocol.RunDir(path)
    if not run.exists():
        print(f"hitl-oracle: error: {path} is not a run directory (no {protocol.CONFIG_FILE})", file=sys.stderr)
        return 2
    try:
        if args.once:
            from .config import TrainConfig
            from .data import DataRequest, build_dataset
            cfg = TrainConfig.from_dict(protocol.read_config(run))
            data = build_dataset(cfg.dataset, DataRequest(cfg.data_dir, cfg.image_size, cfg.seed,
                                                          cfg.train_fraction, cfg.val_fraction, cfg.dataset_options))
            epoch = protocol.pending_epoch(run)
            done = epoch is not None and OracleAnnotator(data.train)(run, epoch)
            print(f"answered the queue of epoch {epoch}" if done else "no pending queue")
            return 0
        watch(run)
        return 0
    except (DataError, protocol.ProtocolError) as e:
        print(f"hitl-oracle: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
