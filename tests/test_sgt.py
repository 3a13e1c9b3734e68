"""Saliency-guided training (trainer/sgt.py): exactly k pixels masked per image, fills that stay in
range, no parameter gradients or batch-norm statistics from the saliency pass, a KL term that vanishes
for a model that ignores what is masked, and the trainer's step with --method sgt."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.cli import CLIError, parse_args
from trainer.config import TrainConfig
from trainer.model import create_classifier
from trainer.inputs import fill_values, masked
from trainer.sgt import SaliencyGuided, input_saliency, lowest_saliency_mask, parse_fill


class PatchModel(nn.Module):
    """Two logits from the mean of the top-left 8×8 patch only: its input gradient is zero elsewhere."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        s = self.scale * (x[:, :, :8, :8].mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-s, s], 1)


def test_exactly_k_lowest_pixels_are_masked_even_with_ties():
    saliency = torch.rand(5, 16, 16)
    saliency[1] = 0.0                                 # all tied
    saliency[2, :4] = -1.0                            # 64 clear losers
    mask = lowest_saliency_mask(saliency, k=64)
    assert mask.shape == (5, 16, 16) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [64] * 5
    assert mask[2, :4].all()
    kept_min = saliency[0][~mask[0]].min()
    assert saliency[0][mask[0]].max() <= kept_min
    assert not lowest_saliency_mask(saliency, k=0).any()


def test_fills_replace_only_masked_pixels_and_stay_in_each_images_range():
    x = torch.rand(4, 3, 8, 8) * torch.tensor([0.2, 0.5, 0.8, 1.0]).view(-1, 1, 1, 1)
    mask = torch.rand(4, 8, 8) < 0.5
    noisy = masked(x, mask, fill_values(x, None))
    keep = ~mask[:, None].expand_as(x)
    assert torch.equal(noisy[keep], x[keep])
    for i in range(4):
        assert x[i].min() <= noisy[i].min() and noisy[i].max() <= x[i].max()
    grey = masked(x, mask, fill_values(x, 0.5))
    assert (grey[~keep] == 0.5).all()
    assert parse_fill("random") is None and parse_fill("0.25") == 0.25
    with pytest.raises(ValueError, match="random"):
        parse_fill("noise")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_fill("2")


def test_saliency_pass_leaves_parameters_and_running_statistics_alone():
    model = create_classifier("hitl_cnn", 10, 3).train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    s = input_saliency(model, x, y)
    assert s.shape == (6, 32, 32) and (s >= 0).all() and s.sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert model.training and bn.training


def test_kl_term_vanishes_when_the_model_ignores_what_is_masked():
    model = PatchModel()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 2, (8,))
    sgt = SaliencyGuided(fraction=0.9, weight=1.0, fill="random")  # 90% < the 15/16 outside the patch
    term = sgt(model, x, y, model(x))
    assert term.item() == pytest.approx(0.0, abs=1e-7)
    term.backward()
    assert model.scale.grad.abs().item() < 1e-6


def test_kl_term_reaches_the_weights_when_masking_changes_the_prediction():
    model = create_classifier("hitl_cnn", 10, 3).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    term = SaliencyGuided(fraction=0.5, weight=2.0, fill="0")(model, x, y, model(x))
    assert term.item() > 0
    term.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_sgt_fraction_must_leave_something():
    with pytest.raises(ValueError, match="sgt-fraction"):
        SaliencyGuided(fraction=1.0, weight=1.0, fill="random")


def test_cli_flags_and_their_one_line_errors(tmp_path):
    cfg, _ = parse_args(["--runs-dir", str(tmp_path), "--method", "sgt", "--sgt-fraction", "0.3",
                         "--sgt-weight", "2", "--sgt-fill", "0.5"])
    assert (cfg.method, cfg.sgt_fraction, cfg.sgt_weight, cfg.sgt_fill) == ("sgt", 0.3, 2.0, "0.5")
    assert TrainConfig().method == "plain"
    with pytest.raises(CLIError, match="only apply with --method sgt"):
        parse_args(["--runs-dir", str(tmp_path), "--sgt-fraction", "0.3"])
    with pytest.raises(CLIError, match="strictly between 0 and 1"):
        parse_args(["--runs-dir", str(tmp_path), "--method", "sgt", "--sgt-fraction", "1"])
    with pytest.raises(CLIError, match="random"):
        parse_args(["--runs-dir", str(tmp_path), "--method", "sgt", "--sgt-fill", "grey"])


@pytest.fixture(scope="module")
def batch():
    from trainer.data import DataRequest, build_dataset

    data = build_dataset("decoy-digits", DataRequest(None, 32, 0))
    idx = torch.arange(16)
    x, y = data.train.batch(idx)
    return x, y, idx


def make_trainer(tmp_path, **overrides):
    from trainer.train import Trainer

    cfg = TrainConfig(runs_dir=str(tmp_path), title="t", annotator="none", batch_size=16, **overrides)
    return Trainer(cfg, log=lambda *a: None)


def test_train_step_adds_the_term_without_touching_running_statistics(tmp_path, batch):
    x, y, idx = batch
    plain, sgt = make_trainer(tmp_path), make_trainer(tmp_path, method="sgt")
    assert sgt.sgt is not None and plain.sgt is None
    loss_plain, _, _ = plain.train_step(x, y, idx)
    loss_sgt, _, _ = sgt.train_step(x, y, idx)
    assert loss_sgt.item() > loss_plain.item()  # same weights, same batch: CE plus a positive KL
    for a, b in zip(plain.model.modules(), sgt.model.modules()):
        if isinstance(a, nn.BatchNorm2d):  # only the real batch updates them, once
            assert torch.allclose(a.running_mean, b.running_mean) and int(a.num_batches_tracked) == int(b.num_batches_tracked)


def test_sgt_combines_with_the_feedback_penalty(tmp_path, batch):
    x, y, idx = batch
    trainer = make_trainer(tmp_path, method="sgt", penalty="rrr", penalty_impl="exact", teaching_gate="off")
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:8, :8] = True
    trainer.feedback.add(3, mask)
    loss, logits, pen = trainer.train_step(x, y, idx)
    assert logits.shape == (16, 10) and pen.item() > 0 and torch.isfinite(loss)
