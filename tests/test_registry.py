"""Penalties and explainers each live in one registry, and everything that lists them reads it: the
CLI's choices (and so the dashboard's launcher), the bench's variants and the tables of docs/usage.md. Runs
written when the linearised implementation was called ``fd`` (or ``jvp``) still open and resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.plans import PENALTY_VARIANTS, REFERENCE_VARIANT, variant_settings
from trainer import protocol
from trainer.cli import CLIError, parse_args
from trainer.config import TrainConfig
from trainer.explain import EXPLAINERS, DeepLift, create_explainer
from trainer.model import create_classifier
from trainer.penalty import PENALTIES, LinearisedRightReasons, penalty_class, resolve_impl
from trainer.tables import markdown
from trainer.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flag,choices", [("--penalty", sorted(PENALTIES)), ("--saliency", sorted(EXPLAINERS)),
                                          ("--penalty-impl", ["auto", "exact", "linearised"])])
def test_cli_choices_are_the_registries(tmp_path, flag, choices):
    with pytest.raises(CLIError) as refused:
        parse_args(["-md", str(tmp_path), flag, "nonsense"])
    assert str(refused.value).endswith("(choose from " + ", ".join(f"'{c}'" for c in choices) + ")")


@pytest.mark.parametrize("old", ["fd", "jvp"])
def test_old_implementation_names_are_accepted_on_the_command_line(tmp_path, old):
    cfg, _ = parse_args(["-md", str(tmp_path), "--penalty-impl", old])
    assert cfg.penalty_impl == "linearised"


def test_unknown_implementation_in_a_config_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown penalty implementation 'bogus'; choose from auto, exact, linearised"):
        resolve_impl("bogus", "cpu")


@pytest.mark.parametrize("old", ["fd", "jvp"])
def test_a_run_saved_with_an_old_implementation_name_resumes(tmp_path, old):
    cfg = TrainConfig(runs_dir=str(tmp_path), title="old", epochs=1, train_fraction=0.1, val_fraction=0.2,
                      annotator="none", penalty_impl="linearised", track_images=0)
    Trainer(cfg, log=lambda *a: None).fit()
    run = protocol.RunDir(tmp_path / "old")
    protocol.write_config(run, {**protocol.read_config(run), "penalty_impl": old})
    resumed_cfg, resume = parse_args(["--resume", "-md", str(tmp_path), "-td", "old", "-E", "2"])
    trainer = Trainer(resumed_cfg, resume=resume, log=lambda *a: None)
    assert trainer.penalty_impl == "linearised" and type(trainer.penalty) is LinearisedRightReasons
    trainer.feedback.add(0, trainer.data.train.masks[0])
    assert trainer.fit()["n_feedback"] == 1
    assert [r["epoch"] for r in protocol.read_metrics(run)] == [1, 2]


def test_every_bench_variant_is_a_registered_penalty():
    assert PENALTY_VARIANTS == ("rrr/exact", "rrr/linearised", "gradcam", "counterfactual")
    assert REFERENCE_VARIANT in PENALTY_VARIANTS
    for variant in PENALTY_VARIANTS:
        settings = variant_settings(variant)
        cls = penalty_class(settings["penalty"], settings.get("penalty_impl", "exact"))
        assert cls.name == settings["penalty"]
        assert cls.implementation == settings.get("penalty_impl")


def test_usage_tables_are_the_registries():
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert markdown() in usage, "docs/usage.md's penalty/explainer tables are stale: paste `python -m trainer.tables`"


def test_trainer_explains_with_the_configured_deeplift_baseline():
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3).eval()
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    zero = create_explainer("deeplift", model, deeplift_baseline="zero").attribute(x, target)
    assert torch.equal(zero, DeepLift(model, baseline="zero").attribute(x, target))
    assert not torch.allclose(zero, create_explainer("deeplift", model).attribute(x, target))


@pytest.mark.parametrize("name", [n for n, cls in EXPLAINERS.items() if not cls.needs_attention_head])
def test_every_explainer_gives_one_map_per_image(name):
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3)
    x, target = torch.rand(5, 3, 32, 32), torch.tensor([1, 2, 3, 4, 5])
    maps = create_explainer(name, model, batch_size=2).attribute(x, target)
    assert maps.shape == (5, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
