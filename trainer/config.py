"""The resolved training configuration, saved as ``config.json`` in the run directory."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    dataset: str = "decoy-digits"
    data_dir: str | None = None
    runs_dir: str = "checkpoints"
    title: str | None = None
    epochs: int = 8
    train_fraction: float = 1.0
    val_fraction: float = 1.0
    model: str = "hitl_cnn"
    pretrained: bool = False
    head: str = "pool"                      # pool (the backbone's own) | attention (trainer/head.py)
    init_from: str | None = None            # a checkpoint whose weights the run starts from
    image_size: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    penalty_weight: float | None = None     # --lambda; None: the feedback method's own (trainer/teaching.py)
    penalty: str = "rrr"
    penalty_impl: str = "auto"              # exact on CPU, linearised on CUDA | linearised (probe; "fd" in old runs) | exact
    saliency: str = "deeplift"
    deeplift_baseline: str = "blur"         # blur (the original tool's) | zero
    method: str = "plain"                   # plain | sgt (saliency-guided training, trainer/sgt.py)
    sgt_fraction: float = 0.5               # share of pixels masked per image
    sgt_weight: float = 1.0                 # λ_kl
    sgt_fill: str = "random"                # random (uniform in the image's range) | a number in [0, 1]
    sampling: str = "high_entropy_by_class"  # the study's is high_entropy (trainer/sampling.py)
    entropy_threshold: float = 0.0          # nats; the maximum is ln(number of classes)
    queries_per_epoch: int = 10
    proposals_per_epoch: int = 0            # images proposed per round as carrying a marked artefact (trainer/proposals.py)
    query_budget: int = 0                   # images asked about over the whole run; 0: no limit
    query_start_epoch: int = 0              # 0: one round before training too (docs/usage.md, bench)
    oversample: bool = True                 # annotated images join every batch (1/8 of its size) once marks teach fully
    annotator: str = "human"                # human | oracle | none
    feedback_timeout: float = 0.0           # seconds; 0 waits for ever
    seed: int = 0
    device: str = "auto"
    workers: int | None = None            # DataLoader workers for data on disk; None: in memory if it fits, else up to 4
    track_images: int = 32                  # annotated images whose saliency is saved every epoch
    dataset_options: dict = field(default_factory=dict)
    # how masks teach (trainer/counterexamples.py), masks given up front, the simulated annotator's style
    feedback_method: str = "auto"           # auto (the penalty where the finder misses) | penalty | counterexamples | both
    teaching_gate: str = "marks"            # marks: full teaching once the marks tell the class | off (trainer/teaching.py)
    counterexample_share: float = 0.5       # counterexamples appended per batch, as a share of its size
    counterexample_fill: str = "mix"        # mix | region | paste
    counterexample_dilate: int | str = 0    # pixels the marks grow by before they are filled; auto: 1/32 of the side
    counterexample_transfer: float = 0.5    # share of unannotated batch images given a recurring mark, filled; 0: no carrying
    counterexample_carry: str = "found"     # found: also the marked artefact wherever the finder sees it | recurring
    prior_masks: str | None = None          # all | N: ground-truth masks of the first N training images
    oracle_style: str = "exact"             # exact | box | loose | partial (trainer/annotator.py)
    oracle_skip: float = 0.0                # share of queries the simulated annotator skips

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config as saved; a run saved before a setting existed keeps what it trained with then."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**FORMER_DEFAULTS, **{k: v for k, v in d.items() if k in names}})


# Settings whose default changed, with what a run saved before they existed used.
FORMER_DEFAULTS = {"feedback_method": "penalty", "counterexample_transfer": 0.0, "teaching_gate": "off",
                   "counterexample_carry": "recurring"}
