"""The run-directory protocol shared by the trainer, the dashboard and the simulated annotator.

Torch-free on purpose: the dashboard imports only this package, so a trainer on another machine that
shares the folder is enough. One writer per file: the trainer writes everything except ``feedback/``,
which only an annotator (the dashboard or the oracle) writes, ``evaluation.json``, which only
``hitl-evaluate`` writes, and ``launch.json``, which only the dashboard writes. Every file is written
atomically (``atomic``). One module per concern; this file re-exports their public names, so callers
write ``protocol.read_status(run)``:

    atomic    temp file + rename, the one writer of files another process reads
    formats   the format number, upgrades of older documents, strict JSON reading
    layout    file names and ``RunDir`` (see docs/run-directory.md for the whole layout)
    status    config, status and heartbeat, launch record, trainer log
    lock      one trainer per run: the OS lock on trainer.lock
    records   metrics, confusion matrix, tracking, evaluation
    queue     the query queue and its manifest
    proposals the queue's proposals: images that seem to carry what was marked, with proposed masks
    maskfile  the mask file: codec, answers, checks, rejecting
"""
from .atomic import (TEMP_GLOB, atomic_save_npy, atomic_write_bytes, atomic_write_json, atomic_write_text,
                     describe_os_error, exclusive_write_bytes, remove_stale_temps)
from .formats import FORMAT, RUN_FILE_MAX_BYTES, ProtocolError, parse_json, read_bytes, read_json, read_text, upgrade
from .layout import (BEST_CHECKPOINT, CONFIG_FILE, CONFUSION_FILE, EVALUATION_FILE, FEEDBACK_DIR,
                     LAST_CHECKPOINT, LAUNCH_FILE, LOCK_FILE, LOG_FILE, MANIFEST_FILE, METRICS_FILE, PLOTS_DIR, QUEUE_DIR,
                     REJECTED_DIR, STATUS_FILE, TRACKING_DIR, TRACKING_FILE, RunDir, run_from_argument)
from .lock import RunBusy, RunLock, busy_message, hold_run, lock_holder, remove_trainer_temps
from .maskfile import (ACTION_MASK, ACTION_SKIP, ACTION_WRONG_LABEL, ACTIONS, MASK_FILE_MAX_BYTES, ImageMarks, QueryFeedback,
                       decode_mask, encode_mask, feedback_document, feedback_sent, load_feedback, parse_feedback,
                       read_mask_file, reject_feedback, submit_feedback, union_marks)
from .proposals import (PROPOSAL_ACCEPT, PROPOSAL_ACTIONS, PROPOSAL_REJECT, PROPOSALS_FILE, SOURCE_DRAWN,
                        SOURCE_PROPOSED, ProposalEntry, proposal_entries, proposal_image_path, proposal_mask_path,
                        read_proposal_image, read_proposal_mask, read_proposals, write_proposal, write_proposals)
from .queue import (QUERY_ID, QueryEntry, pending_epoch, query_image_path, query_saliency_path, queue_epochs,
                    read_manifest, read_query_image, write_manifest, write_query_image)
from .records import (METRIC_COLUMNS, TRACKING_COLUMNS, describe_reliance, describe_teaching, read_confusion,
                      read_evaluation, read_metrics, read_saliency, read_tracking, write_confusion, write_evaluation,
                      write_metrics, write_tracking)
from .status import (FAILED, FINISHED, HEARTBEAT_SECONDS, STALE, STALE_AFTER_SECONDS, STATES, STOPPED, TRAINING,
                     WAITING, delete_run, launch_alive, launch_is_newer, mark_stop_requested, open_log, pid_alive, read_config, read_launch,
                     read_log_tail, read_status, write_config, write_launch, write_status)
