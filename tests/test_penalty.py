"""The feedback penalty reaches the weights, and teaches what the mask says."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import DataRequest, build_dataset
from trainer.explain import wrong_reason_share
from trainer.model import create_classifier
from trainer.penalty import eval_mode, get_penalty, input_gradient
from trainer.train import Trainer


@pytest.fixture(scope="module")
def digits():
    return build_dataset("decoy-digits", DataRequest(None, None, 0, 1.0, 1.0, {}))


def briefly_trained(digits, steps: int = 30):
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = digits.train.batch(torch.randint(len(digits.train), (64,), generator=g))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def parameter_gradient(model, fn, x, mask, y) -> torch.Tensor:
    model.zero_grad()
    fn(model, x, mask, y).mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("impl", ["exact", "jvp", "fd"])
def test_penalty_has_a_parameter_gradient(digits, impl):
    model = briefly_trained(digits, steps=5).train()
    x, y = digits.train.batch(torch.arange(8))
    mask = digits.train.masks[:8].float()
    grad = parameter_gradient(model, get_penalty("rrr", impl), x, mask, y)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    get_penalty("rrr", impl)(model, x, mask, y)
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after)), "the penalty must not move running statistics"


def test_jvp_gives_the_exact_gradient(digits):
    """Forward-over-reverse equals double backpropagation (eval-mode batch-norm, where PyTorch's
    forward-mode rule is exact)."""
    model = briefly_trained(digits).eval()
    x, y = digits.train.batch(torch.arange(16))
    mask = digits.train.masks[:16].float()
    exact = parameter_gradient(model, get_penalty("rrr", "exact"), x, mask, y)
    jvp = parameter_gradient(model, get_penalty("rrr", "jvp"), x, mask, y)
    assert F.cosine_similarity(exact, jvp, dim=0) >= 0.95
    assert jvp.norm() / exact.norm() == pytest.approx(1.0, rel=0.05)


def test_no_penalty_pass_without_feedback(tmp_path, monkeypatch):
    trainer = Trainer(TrainConfig(runs_dir=str(tmp_path), title="t", train_fraction=0.1, annotator="none"),
                      log=lambda *a: None)
    calls = []
    monkeypatch.setattr(trainer, "penalty_fn", lambda *a: calls.append(1))
    x, y = trainer.data.train.batch(torch.arange(16))
    _, _, pen = trainer.train_step(x, y, torch.arange(16))
    assert calls == [] and pen.item() == 0


def test_masks_move_attribution_out_of_the_masked_region(tmp_path):
    """The same short training with and without masks on every image: with them, a smaller share of the
    input-gradient energy lands on the confounder of held-out images, and accuracy on the decorrelated
    test split rises."""
    results = {}
    for name in ("plain", "masked"):
        cfg = TrainConfig(runs_dir=str(tmp_path), title=name, epochs=3, train_fraction=0.5, annotator="none")
        trainer = Trainer(cfg, log=lambda *a: None)
        if name == "masked":
            trainer.feedback.add_all(trainer.data.train.masks)
        results[name] = trainer.fit()
        test = trainer.data.test
        x, _ = test.batch(torch.arange(128))
        with eval_mode(trainer.model):
            energy = input_gradient(trainer.model, x).pow(2).sum(1)
        results[name]["share"] = wrong_reason_share(energy, test.masks[:128]).mean().item()
    assert results["masked"]["share"] < 0.8 * results["plain"]["share"], results
    assert results["masked"]["test_acc"] > results["plain"]["test_acc"], results
