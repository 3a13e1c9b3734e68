"""``hitl-train`` / ``python -m trainer``: long options, plus the original tool's short flags as aliases
so its documented command still works."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from . import confine, protocol
from .config import TrainConfig
from .proposals import MIN_MARKED
from .teaching import AUTO_PENALTY_WEIGHT, PENALTY_WEIGHT, Teaching

DEFAULTS = TrainConfig()


class CLIError(Exception):
    pass


class RunFileError(CLIError):
    """A file of the run to resume that cannot be used; ``run`` is the run."""

    def __init__(self, message: str, run: protocol.RunDir):
        super().__init__(message)
        self.run = run


def parse_bool(text: str) -> bool:
    """A real boolean: ``-ov False`` is false (the original parsed any non-empty string as True)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v
    return parse


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def _open_fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return v


def _fill(text: str) -> str:
    from .sgt import parse_fill

    try:
        parse_fill(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _non_negative(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return v
    return parse


def path_value(text: str) -> str:
    """The type of every path-valued option: ``path_options`` finds them by it, and a dashboard confines
    them (trainer/confine.py). A new option that names a file or folder must use it."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError("expected a path")
    return text


def path_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every path-valued option's setting name and its long flag, read from the parser itself."""
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.type is path_value}


class Parser(argparse.ArgumentParser):
    """argparse that raises CLIError (one line, no usage dump) instead of exiting."""

    def error(self, message: str):  # one line, no usage dump
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .explain import DEEPLIFT_BASELINES, EXPLAINERS
    from .head import HEADS
    from .penalty import IMPL_ALIASES, PENALTIES, implementation_names
    from .sampling import SAMPLERS
    from .sgt import METHODS

    d = DEFAULTS
    p = Parser(prog="hitl-train", argument_default=argparse.SUPPRESS,
                description="Train an image classifier with human feedback on its saliency maps.")
    data = p.add_argument_group("data")
    data.add_argument("-ds", "--dataset", choices=sorted(DATASETS), help=f"default {d.dataset}")
    data.add_argument("-dr", "--data-dir", type=path_value, metavar="PATH", help="folder of a data set on disk (not needed for generated sets)")
    data.add_argument("-tf", "--train-fraction", type=_fraction, help="stratified share of the training images (default 1)")
    data.add_argument("-vf", "--val-fraction", type=_fraction, help="stratified share of the validation images (default 1)")
    data.add_argument("--image-size", type=positive(int), help="side in pixels (default: the data set's)")
    data.add_argument("--task", dest="task", help="isic2017 only: melanoma (binary) or 3-class")
    data.add_argument("--workers", type=_non_negative(int), help="DataLoader workers decoding data sets on disk every epoch (default: splits whose decoded images "
                           "fit in 512 MiB are decoded into memory once, the rest by up to 4 persistent workers, one core spare)")

    run = p.add_argument_group("run")
    run.add_argument("-md", "--runs-dir", type=path_value, metavar="DIR", help=f"where runs live (default {d.runs_dir}/)")
    run.add_argument("-td", "--title", help="run name: the folder under --runs-dir (default: dataset and time)")
    run.add_argument("--resume", action="store_true", help="continue the run --title from its last checkpoint")
    run.add_argument("--config", type=path_value, metavar="FILE",
                     help="settings from a YAML, TOML or JSON file (a run's config.json works as it is); flags given "
                          "as well override it; the run name and runs folder come from flags only")
    run.add_argument("-E", "--epochs", type=positive(int), help=f"default {d.epochs}")
    run.add_argument("--seed", type=int, help=f"default {d.seed}")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto (CUDA when present)")

    model = p.add_argument_group("model")
    model.add_argument("--model", help=f"any timm architecture (default {d.model}, a small CNN)")
    model.add_argument("--pretrained", type=parse_bool, nargs="?", const=True,
                       help="ImageNet weights from the local cache or the hub (fails clearly offline)")
    model.add_argument("--head", choices=list(HEADS),
                       help="pool: the backbone's global pool (default); attention: a learned attention pool whose "
                            "weights explain the prediction (CNNs; starts as average pooling)")
    model.add_argument("--init-from", type=path_value, metavar="CHECKPOINT",
                       help="start from another run's weights (e.g. RUN/best.pt), say to add --head attention to a "
                            "trained model and fine-tune it")
    model.add_argument("--batch-size", type=positive(int), help=f"default {d.batch_size}")
    model.add_argument("--lr", type=positive(float), help=f"default {d.lr}")
    model.add_argument("--weight-decay", type=_non_negative(float), help=f"AdamW weight decay (default {d.weight_decay:g})")

    method = p.add_argument_group("saliency-guided training")
    method.add_argument("--method", choices=list(METHODS),
                        help="plain (default) or sgt: mask the least salient pixels each step and keep the prediction "
                             "on the masked copy (Ismail et al. 2021); combines with feedback")
    method.add_argument("--sgt-fraction", type=_open_fraction,
                        help=f"share of pixels masked (default {d.sgt_fraction})")
    method.add_argument("--sgt-weight", type=_non_negative(float),
                        help=f"weight λ_kl of the KL term (default {d.sgt_weight:g})")
    method.add_argument("--sgt-fill", type=_fill,
                        help="masked pixels become uniform noise in the image's range (random, default) or a constant "
                             "in [0, 1]")

    fb = p.add_argument_group("feedback")
    fb.add_argument("--annotator", choices=["human", "oracle", "none"],
                    help="who answers queries: the dashboard, the simulated annotator, or nobody (plain training)")
    fb.add_argument("-sp", "--sampling", choices=sorted(SAMPLERS), help=f"default {d.sampling}")
    fb.add_argument("-et", "--entropy-threshold", type=_non_negative(float),
                    help="in nats (natural log); the maximum is ln(classes). default 0")
    fb.add_argument("-qu", "--queries-per-epoch", type=_non_negative(int),
                    help=f"images asked about a round; the first round asks at least {MIN_MARKED}, the marks the "
                         f"trainer needs to find the artefact on unmarked images. default {d.queries_per_epoch}")
    fb.add_argument("-se", "--query-start-epoch", type=_non_negative(int),
                    help="first epoch after which the model asks; 0 (default) also asks once before training, so marks "
                         "shape the model before it learns a shortcut")
    fb.add_argument("--proposals", dest="proposals_per_epoch", type=_non_negative(int), metavar="N",
                    help=f"once {MIN_MARKED} images carry a small mark, each round also proposes up to N other training "
                         "images that seem to carry the same artefact, with a mask each, to accept or reject in bulk "
                         f"(trainer/proposals.py; default {d.proposals_per_epoch}: none)")
    fb.add_argument("--query-budget", type=_non_negative(int), metavar="N",
                    help="ask about at most N images over the whole run (default 0: no limit); once they are asked, "
                         "rounds bring only proposals to confirm (with --proposals), or none")
    fb.add_argument("-ov", "--oversample", type=parse_bool, nargs="?", const=True,
                    help="add annotated images to every batch, 1/8 of the batch size, once the marks teach fully "
                         "(--teaching-gate; default true; -ov False turns it off)")
    fb.add_argument("--lambda", dest="penalty_weight", type=_non_negative(float),
                    help=f"penalty weight λ (default {PENALTY_WEIGHT:g} with --feedback penalty or both, "
                         f"{AUTO_PENALTY_WEIGHT:g} with auto, which weighs each mark's penalty below it by the share of "
                         "the mark the trainer finds by itself)")
    fb.add_argument("--penalty", choices=sorted(PENALTIES),
                    help=f"default {d.penalty}. " + "; ".join(
                        f"{name}: {cls.summary}" + (" (--head attention)" if cls.needs_attention_head else "")
                        for name, cls in PENALTIES.items()))
    fb.add_argument("--penalty-impl", choices=["auto", *implementation_names()], type=lambda s: IMPL_ALIASES.get(s, s),
                    help="how the rrr gradient is computed: linearised (a probe copy of each annotated image in the "
                         "main batch through the network linearised at the image, first order only; fd in older "
                         "runs), exact (double backpropagation, the reference) or auto (default: exact on CPU, "
                         "linearised on CUDA)")
    fb.add_argument("--saliency", choices=sorted(EXPLAINERS), help=f"explainer for queries (default {d.saliency})")
    fb.add_argument("--deeplift-baseline", choices=sorted(DEEPLIFT_BASELINES),
                    help="what deeplift compares the image with: a blurred copy (default, as the original tool) "
                         "or black")
    fb.add_argument("--track-images", type=_non_negative(int),
                    help=f"annotated images whose saliency is saved after every epoch for the Learning page "
                         f"(default {d.track_images})")
    fb.add_argument("--feedback-timeout", type=_non_negative(float),
                    help="seconds to wait for a mask file; 0 waits for ever (default). On timeout training goes "
                         "on without feedback for that epoch, and a later answer is applied at the next epoch end")
    _add_learning_arguments(p.add_argument_group("how masks teach, masks given up front, the simulated annotator"))
    p.add_argument("--options-json", action="store_true", help="print these options as JSON and exit")
    return p


def describe_options() -> dict:
    """The options as data (name, flags, choices, default, help, type, value: none, optional or
    required, path: whether it names a file or folder) and the default config: what the dashboard builds its form from and checks typed flags
    against, so it never reads the parser's internals."""
    defaults = DEFAULTS.to_dict()
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    options = []
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        options.append({
            "name": action.dest, "flags": list(action.option_strings),
            "choices": list(action.choices) if action.choices else None, "default": defaults.get(action.dest),
            "help": action.help, "type": "switch" if action.nargs == 0 else types.get(action.dest, "str"),
            "value": "none" if action.nargs == 0 else "optional" if action.nargs == "?" else "required",
            "path": action.type is path_value})
    return {"options": options, "defaults": defaults}


def _add_learning_arguments(group) -> None:
    from .annotator import STYLES
    from .counterexamples import CARRIES, FILLS
    from .teaching import GATES, TEACHING_METHODS
    from .prior import parse_prior_masks

    def prior(text: str) -> str:
        try:
            return parse_prior_masks(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def share(text: str) -> float:
        v = _non_negative(float)(text)
        if not v <= 1:  # nan too
            raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
        return v

    def skip_share(text: str) -> float:
        v = _non_negative(float)(text)
        if not v < 1:  # nan too
            raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
        return v

    group.add_argument("--feedback", dest="feedback_method", choices=TEACHING_METHODS,
                       help="how masks reach the weights: penalty (--penalty on annotated images), "
                            "counterexamples (annotated images re-entered with the marked pixels replaced, same "
                            "label; trainer/counterexamples.py), both, or auto (default): counterexamples, and the "
                            "penalty on each annotated image by the share of its mark the trainer cannot find again "
                            "by itself (trainer/teaching.py, docs/learning.md)")
    group.add_argument("--teaching-gate", choices=GATES,
                       help="marks (default): the marks teach nothing (training as without them) while the images "
                            "that carry what was marked show it does not go with the class, fully once it does (or "
                            "too few carry it to tell); off: fully from the first mark (trainer/teaching.py)")
    group.add_argument("--counterexample-share", type=positive(float),
                       help="counterexamples appended to each batch, as a share of its size (default 0.5)")
    group.add_argument("--counterexample-fill", choices=FILLS,
                       help="region: the same pixels of another image; paste: another annotated image's marked "
                            "content; mix (default): half each")
    def dilation(text: str) -> int | str:
        if text == "auto":
            return text
        if not text.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected auto or a number of pixels, got {text!r}")
        return int(text)

    group.add_argument("--counterexample-dilate", type=dilation, metavar="auto|PIXELS",
                       help="grow each mark by this many pixels before filling it, so that a loose mark that cuts "
                            "into the region leaves none of it; auto: 1/32 of the image side, for rough marks "
                            "(default 0: with exact marks growing them costs accuracy, docs/learning.md)")
    group.add_argument("--counterexample-transfer", type=share, metavar="SHARE",
                       help="share of each batch's unannotated images that get a recurring mark (drawn at the "
                            "same place on at least 3 annotated images) filled, so that the artefact stops paying "
                            "on images nobody marked (default 0.5; 0: nothing is carried, only annotated images "
                            "teach)")
    group.add_argument("--counterexample-carry", choices=CARRIES,
                       help="found (default): also look for the marked artefact on the images nobody marked "
                            "before each epoch (the proposals' finder, nobody confirming) and fill it wherever it "
                            "is found; recurring: recurring marks only")
    group.add_argument("--prior-masks", type=prior, metavar="all|N",
                       help="train with the data set's masks (generated sets' ground truth, a csv data set's mask "
                            "column) of the first N training images, or all, from the start")
    group.add_argument("--oracle-style", choices=STYLES,
                       help="how the simulated annotator draws: exact (default), box, loose (a box off by a few "
                            "pixels) or partial (part of the region unmarked)")
    group.add_argument("--oracle-skip", type=skip_share, metavar="SHARE",
                       help="share of queries the simulated annotator skips (default 0)")


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, bool]:
    """The resolved config and whether to resume. The base is the defaults, overridden by ``--config``'s
    file, overridden by the flags; on --resume the run's saved config is the base and only the flags
    given again override it."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    given.pop("options_json", None)
    resume = given.pop("resume", False)
    roots = confine.roots_from_env()
    if roots is not None:  # started from a dashboard: paths are checked before any file is opened
        defaults = DEFAULTS.to_dict()
        for dest, flag in path_options(parser).items():
            value = given.get(dest, defaults.get(dest))
            if value is not None:
                _confine(value, roots, flag, show_value=True)
    if "config" in given:
        if resume:
            raise CLIError("--config and --resume cannot be combined: a resumed run keeps its own config")
        from_file = settings_from_file(given.pop("config"), parser, roots)
    else:
        from_file = {}
    task = given.pop("task", from_file.pop("task", None))
    runs_dir = given.get("runs_dir", DEFAULTS.runs_dir)
    if resume:
        if "title" not in given:
            raise CLIError("--resume needs the run's --title (-td)")
        run = protocol.RunDir(Path(runs_dir) / given["title"])
        if not run.has_config():
            raise CLIError(f"--resume: no run at {run.path} (a run stopped before it wrote its config.json has "
                           f"nothing to resume: start it again without --resume)")
        base = saved_config(run, parser, given)
    else:
        base = DEFAULTS.to_dict()
    cfg = TrainConfig.from_dict({**base, **from_file, **given})
    if task is not None:
        cfg.dataset_options = {**cfg.dataset_options, "task": task}
    if not cfg.title:
        cfg.title = f"{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in cfg.title or cfg.title in (".", ".."):
        raise CLIError(f"--title {cfg.title!r} must be a plain folder name")
    if not resume and protocol.RunDir(Path(cfg.runs_dir) / cfg.title).has_config():
        raise CLIError(f"run {cfg.title!r} already exists in {cfg.runs_dir}; pass --resume or another --title")
    check_methods(cfg, given, base if resume else None)
    return cfg, resume


def saved_config(run: protocol.RunDir, parser: argparse.ArgumentParser, given: dict) -> dict:
    """The config a resumed run saved, each setting checked by the same parser as the flags (those given
    again are not: the flag replaces them); RunFileError naming the file and what is wrong."""
    path = run.config
    try:  # not read_config: its type checks are the dashboard's; each setting is checked below, or replaced
        doc = protocol.upgrade(protocol.read_json(path), "config")
    except OSError as e:
        raise RunFileError(f"--resume: cannot read {path}: {e.strerror or type(e).__name__}", run) from None
    except protocol.ProtocolError as e:
        reason = re.sub(r"^(config|config\.json): ", "", str(e))
        raise RunFileError(f"--resume: {path}: {reason}", run) from None
    options = {a.dest: a for a in parser._actions if a.option_strings}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in doc.items():
        if key in NOT_FROM_CONFIG_FILES or key in given or key not in names or value is None:
            continue
        if key == "dataset_options":
            if not isinstance(value, dict):
                raise RunFileError(f"--resume: {path}: dataset_options must be an object", run)
            continue
        action = options.get(key)
        if action is None:
            continue
        if isinstance(value, (dict, list)):
            raise RunFileError(f"--resume: {path}: {key} must be a single value, not {type(value).__name__}", run)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            parser.parse_args([action.option_strings[-1], text])
        except CLIError as e:
            raise RunFileError(f"--resume: {path}: {key}: {_without_value(str(e), text)}", run) from None
    return TrainConfig.from_dict(doc).to_dict()


# Keys of a config file that are not settings of the experiment: a run's own name and folder, and the
# number of processes it ran on (torchrun decides that).
NOT_FROM_CONFIG_FILES = ("format", "title", "runs_dir", "world_size")


def settings_from_file(path: str, parser: argparse.ArgumentParser, roots: list[Path] | None = None) -> dict:
    """The settings in a YAML/JSON or TOML file, checked by the same parser as the flags (so a wrong value
    is refused as on the command line, with the file and the key named). A value read from the file is
    never repeated in a message: the file may be one its reader should not see. With ``roots`` (a
    dashboard's allowed folders) every path the file holds must lie inside them."""
    doc = _read_config_file(Path(path))
    options = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[tuple[str, str, list[str]]] = []
    for key, value in doc.items():
        if key in NOT_FROM_CONFIG_FILES or value is None:
            continue
        if key == "dataset_options":
            if not isinstance(value, dict) or set(value) - {"task"}:
                raise CLIError(f"--config {path}: dataset_options may only hold task")
            key, value = "task", value.get("task")
            if value is None:
                continue
        action = options.get(key)
        if action is None or action.dest in ("resume", "config", "options_json", "help"):
            raise CLIError(f"--config {path}: unknown setting {_short(key)}")
        if isinstance(value, (dict, list)):
            raise CLIError(f"--config {path}: {key} must be a single value, not {type(value).__name__}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        tokens.append((key, text, [action.option_strings[-1], text]))
    settings: dict = {}
    for key, text, pair in tokens:
        try:
            settings.update(vars(parser.parse_args(pair)))
        except CLIError as e:
            raise CLIError(f"--config {path}: {key}: {_without_value(str(e), text)}") from None
    if roots is not None:
        for dest in path_options(parser):
            if dest in settings:
                _confine(settings[dest], roots, f"--config {path}: {dest}", show_value=False)
    return settings


def _confine(value: str, roots: list[Path], what: str, show_value: bool) -> None:
    try:
        confine.check(value, roots, what, show_value=show_value)
    except confine.OutsideRoots as e:
        raise CLIError(str(e)) from None


def _short(key: str, limit: int = 40) -> str:
    return repr(key if len(key) <= limit else key[:limit] + "...")


def _without_value(message: str, value: str) -> str:
    """The parser's reason for refusing ``value``, with the value taken out (or a plain "not an
    accepted value" when it cannot be taken out cleanly)."""
    reason = re.sub(r"^argument [^:]+: ", "", message)
    reason = re.sub(r",? got .*$", "", reason)          # our types: "..., got 'x'"
    reason = re.sub(r": (['\"]).*?\1(?= \(|$)", "", reason)  # argparse: "invalid choice: 'x' (choose from ...)"
    if not reason.strip() or (value and value in reason):
        return "not an accepted value"
    return reason
def _read_config_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--config: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            doc = tomllib.loads(text)
        else:  # YAML, and JSON as its subset
            import yaml
            doc = yaml.safe_load(text)
    except Exception as e:  # where, not what: a parser's message may quote the file
        where = _error_position(e)
        raise CLIError(f"--config {path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML or JSON'}"
                       f"{f' ({where})' if where else ''}") from None
    if not isinstance(doc, dict):
        raise CLIError(f"--config {path}: expected a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def _error_position(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)  # YAML
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    found = re.search(r"line (\d+), column (\d+)", str(e))  # TOML
    return f"line {found[1]}, column {found[2]}" if found else ""


def check_methods(cfg: TrainConfig, given: dict, resumed: dict | None) -> None:
    """Combinations that cannot work, refused before any data set is built."""
    from .explain import EXPLAINERS
    from .penalty import PENALTIES

    if cfg.head != "attention":
        if EXPLAINERS[cfg.saliency].needs_attention_head:
            raise CLIError(f"--saliency {cfg.saliency} needs --head attention")
        if PENALTIES[cfg.penalty].needs_attention_head:
            raise CLIError(f"--penalty {cfg.penalty} needs --head attention")
    if cfg.method != "sgt":
        unused = [f"--{k.replace('_', '-')}" for k in ("sgt_fraction", "sgt_weight", "sgt_fill") if k in given]
        if unused:
            raise CLIError(f"{', '.join(unused)} only apply with --method sgt")
    if not Teaching(cfg.feedback_method).counterexamples:
        unused = [f"--{k.replace('_', '-')}" for k in ("counterexample_share", "counterexample_fill",
                                                      "counterexample_dilate", "counterexample_transfer",
                                                      "counterexample_carry")
                  if k in given]
        if unused:
            raise CLIError(f"{', '.join(unused)} only apply with --feedback counterexamples or both")
    if resumed is not None and resumed.get("head", "pool") != cfg.head:
        raise CLIError(f"--head cannot change on --resume (the checkpoint has the {resumed.get('head', 'pool')} head); "
                       f"start a new run with --init-from {Path(cfg.runs_dir) / cfg.title / protocol.LAST_CHECKPOINT}")
    if "init_from" in given and not Path(cfg.init_from).is_file():
        raise CLIError(f"--init-from: no checkpoint at {cfg.init_from}")


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .model import ModelError
    from .lifecycle import Stopped, install_stop_handlers, run_training

    if "--options-json" in (sys.argv[1:] if argv is None else argv):
        print(json.dumps(describe_options()))
        return 0
    try:
        cfg, resume = parse_args(argv)
    except RunFileError as e:
        _mark_refused(e)
        print(f"hitl-train: error: {e}", file=sys.stderr)
        return 2
    except CLIError as e:
        print(f"hitl-train: error: {e}", file=sys.stderr)
        return 2
    install_stop_handlers()
    try:
        result = run_training(cfg, resume=resume)
    except protocol.RunBusy as e:
        print(f"hitl-train: error: {e}", file=sys.stderr)
        return 2
    except (DataError, ModelError, FileNotFoundError, ValueError) as e:
        print(f"hitl-train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full runs folder, and the like
        print(f"hitl-train: error: {protocol.describe_os_error(e)}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"hitl-train: stopped ({e}); resume with: hitl-train --resume -md {cfg.runs_dir} -td {cfg.title}",
              file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the job
        print_summary(result)
    return 0


def _mark_refused(e: RunFileError) -> None:
    """A resume refused for a broken run file: the run's status says "failed" with that line, as the run
    cannot be resumed as it is; unless another trainer holds the run (its status is its own) or the
    folder cannot be written (then the status keeps what it said)."""
    from .lifecycle import mark_failed

    if int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        lock = protocol.hold_run(e.run)
    except (protocol.RunBusy, OSError):
        return
    with lock:
        mark_failed(e.run, str(e))


def print_summary(result: dict) -> None:
    lines = [f"best epoch {result['best_epoch']}: val loss {result['best_val_loss']:.4f}, "
             f"val acc {result['best_val_acc']:.3f}"]
    if "test_acc" in result:
        lines.append(f"test acc {result['test_acc']:.3f}, wrong-reason share {result.get('test_wrong_reason', float('nan')):.3f}")
    lines.append(f"feedback set: {result['n_feedback']} images; run directory: {result['run_dir']}")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
