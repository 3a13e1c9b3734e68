"""The feedback penalty reaches the weights, and teaches what the mask says."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import DataRequest, build_dataset
from trainer.explain import wrong_reason_share
from trainer.inputs import input_gradient
from trainer.model import create_classifier
from trainer.modes import eval_mode, input_stats
from trainer.penalty import penalty_class, resolve_impl
from trainer.train import Trainer


@pytest.fixture(scope="module")
def digits():
    return build_dataset("decoy-digits", DataRequest(None, None, 0, 1.0, 1.0, {}))


def briefly_trained(digits, steps: int = 30, name: str = "hitl_cnn"):
    torch.manual_seed(0)
    model = create_classifier(name, 10, 3)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = digits.train.batch(torch.randint(len(digits.train), (64,), generator=g))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def parameter_gradient(model, penalty, x, mask, y) -> torch.Tensor:
    model.zero_grad()
    penalty(x, mask, y).mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("impl", ["exact", "linearised"])
def test_penalty_has_a_parameter_gradient(digits, impl):
    model = briefly_trained(digits, steps=5).train()
    x, y = digits.train.batch(torch.arange(8))
    mask = digits.train.masks[:8].float()
    grad = parameter_gradient(model, penalty_class("rrr", impl)(model), x, mask, y)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    penalty_class("rrr", impl)(model)(x, mask, y)
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after)), "the penalty must not move running statistics"


@pytest.mark.parametrize("name,steps", [("hitl_cnn", 30), ("resnet18", 10), ("efficientnet_b0", 10)])
def test_linearised_gives_the_exact_gradient(digits, name, steps):
    """The linearised probe follows double backpropagation, in train mode as in a step, on ReLU/max-pool
    networks (where a plain finite difference crosses kinks) and on the study's SiLU/squeeze-excite
    family: the same value, and a parameter gradient of the same direction and length."""
    model = briefly_trained(digits, steps, name).train()
    x, y = digits.train.batch(torch.arange(16))
    mask = digits.train.masks[:16].float()
    exact = parameter_gradient(model, penalty_class("rrr", "exact")(model), x, mask, y)
    linearised = parameter_gradient(model, penalty_class("rrr", "linearised")(model), x, mask, y)
    assert F.cosine_similarity(exact.double(), linearised.double(), dim=0) >= 0.9995
    assert linearised.norm() / exact.norm() == pytest.approx(1.0, rel=0.01)
    values = [penalty_class("rrr", impl)(model)(x, mask, y) for impl in ("exact", "linearised")]
    assert torch.allclose(*values, rtol=1e-3)


def test_batch_statistics_match_var_mean_with_a_constant_channel():
    """The statistics an image's own input gradient is normalised with (batch-norm's kernel, eps 0):
    a constant channel has variance 0, not ∞."""
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    x[:, 2] = 7.0
    for a in (x, x.to(memory_format=torch.channels_last)):
        mean, var = input_stats(a)
        expected_var, expected_mean = torch.var_mean(x, [0, 2, 3], unbiased=False)
        assert torch.allclose(mean, expected_mean, atol=1e-6) and torch.allclose(var, expected_var, rtol=1e-5)
        assert var[2] == 0


def test_default_impl_is_exact_on_cpu_and_linearised_on_cuda(tmp_path):
    assert resolve_impl("auto", "cpu") == "exact" and resolve_impl("auto", "cuda") == "linearised"
    assert resolve_impl("jvp", "cpu") == "linearised"  # runs written before fd replaced jvp
    assert resolve_impl("fd", "cpu") == "linearised"   # runs written before linearised replaced fd
    trainer = Trainer(TrainConfig(runs_dir=str(tmp_path), title="t", train_fraction=0.1, annotator="none"),
                      log=lambda *a: None)
    assert trainer.penalty_impl == "exact" and not trainer.penalty.has_probe


def test_no_penalty_pass_without_feedback(tmp_path, monkeypatch):
    trainer = Trainer(TrainConfig(runs_dir=str(tmp_path), title="t", train_fraction=0.1, annotator="none"),
                      log=lambda *a: None)
    calls = []
    monkeypatch.setattr(type(trainer.penalty), "__call__", lambda *a: calls.append(1))
    x, y = trainer.data.train.batch(torch.arange(16))
    _, _, pen = trainer.train_step(x, y, torch.arange(16))
    assert calls == [] and pen.item() == 0


@pytest.mark.parametrize("penalty,impl", [("rrr", "linearised"), ("counterfactual", "linearised")])
def test_a_probe_in_the_batch_gives_what_its_own_pass_gives(tmp_path, penalty, impl):
    """The probe's images ride in the main batch in place of the annotated ones: the penalty and every
    image's logits come out as separate passes give them (eval-mode batch-norm, so batch composition
    cannot matter), in the batch's own order."""
    cfg = TrainConfig(runs_dir=str(tmp_path), title="t", train_fraction=0.1, annotator="none", penalty=penalty,
                      penalty_impl=impl, teaching_gate="off")
    trainer = Trainer(cfg, log=lambda *a: None)
    model = trainer.model.eval()
    x, y = trainer.data.train.batch(torch.arange(16))
    rows = torch.tensor([3, 9, 12])
    for i in rows.tolist():
        trainer.feedback.add(i, trainer.data.train.masks[i])
    torch.manual_seed(1)
    expected = trainer.penalty(x[rows], trainer.data.train.masks[rows].float(), y[rows])
    with torch.no_grad():
        logits = model(x)
    torch.manual_seed(1)
    _, got_logits, got = trainer.train_step(x, y, torch.arange(16))
    assert got.item() == pytest.approx(expected.mean().item(), rel=1e-4)
    others = torch.ones(16, dtype=torch.bool)
    others[rows] = False
    assert torch.allclose(got_logits, logits, atol=1e-4)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return short_run(tmp_path_factory.mktemp("plain"), None)


def short_run(runs_dir, penalty: str | None, impl: str = "linearised") -> dict:
    """Three epochs on half of decoy-digits; with a penalty, masks on every training image."""
    cfg = TrainConfig(runs_dir=str(runs_dir), title="run", epochs=3, train_fraction=0.5, annotator="none",
                      penalty_impl=impl)
    if penalty:
        cfg.penalty = penalty
    trainer = Trainer(cfg, log=lambda *a: None)
    if penalty:
        trainer.feedback.add_all(trainer.data.train.masks)
    result = trainer.fit()
    x, _ = trainer.data.test.batch(torch.arange(128))
    with eval_mode(trainer.model):
        energy = input_gradient(trainer.model, x).pow(2).sum(1)
    result["share"] = wrong_reason_share(energy, trainer.data.test.masks[:128]).mean().item()
    return result


@pytest.mark.parametrize("penalty,impl", [("rrr", "linearised"), ("rrr", "exact"), ("counterfactual", "linearised")])
def test_masks_move_attribution_out_of_the_masked_region(tmp_path, plain_run, penalty, impl):
    """The same short training with and without masks on every image: with them, a smaller share of the
    input-gradient energy lands on the confounder of held-out images, and accuracy on the decorrelated
    test split rises."""
    masked = short_run(tmp_path, penalty, impl)
    assert masked["share"] < 0.8 * plain_run["share"], (masked, plain_run)
    assert masked["test_acc"] > plain_run["test_acc"], (masked, plain_run)
