"""Relevant marks kept apart for the hint penalty (rrr still sees "outside relevant" as forbidden),
the hint penalty itself and its normalisation, and DeepLIFT's two baselines."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer import protocol
from trainer.cli import parse_args
from trainer.explain import DeepLift
from trainer.feedback import FeedbackSet
from trainer.model import create_classifier
from trainer.penalty import PENALTIES, Counterfactual, Hint, RightReasons

H = W = 16


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def answers():
    return [
        protocol.QueryFeedback("q0", 0, protocol.ACTION_MASK, forbidden=box(0, 4, 0, 4)),
        protocol.QueryFeedback("q1", 1, protocol.ACTION_MASK, relevant=box(4, 12, 4, 12)),
        protocol.QueryFeedback("q2", 2, protocol.ACTION_MASK, forbidden=box(0, 2, 0, 2), relevant=box(0, 8, 0, 8)),
    ]


def test_relevant_marks_are_kept_apart_and_rrr_masks_are_unchanged():
    fs = FeedbackSet(5, H, W)
    counts = fs.apply(answers())
    assert {k: counts[k] for k in ("masked", "skipped", "excluded", "proposed")} == \
        {"masked": 3, "skipped": 0, "excluded": 0, "proposed": 0}
    rows, masks = fs.lookup(torch.tensor([0, 1, 2, 3]))
    assert rows.tolist() == [0, 1, 2]
    assert torch.equal(masks[0].bool(), torch.from_numpy(box(0, 4, 0, 4)))
    assert torch.equal(masks[1].bool(), ~torch.from_numpy(box(4, 12, 4, 12)))  # outside relevant: forbidden
    assert torch.equal(masks[2].bool(), torch.from_numpy(box(0, 2, 0, 2) | ~box(0, 8, 0, 8)))
    _, relevance = fs.lookup(torch.tensor([0, 1, 2, 3]), relevance=True)
    assert set(relevance[0].unique().tolist()) == {-1.0, 0.0}  # forbidden only: the rest is unmarked
    assert relevance[0][:4, :4].eq(0).all() and relevance[0][8:, 8:].eq(-1).all()
    assert torch.equal(relevance[1], torch.where(torch.from_numpy(box(4, 12, 4, 12)), 1.0, 0.0))
    assert relevance[2][:2, :2].eq(0).all() and relevance[2][2:8, 2:8].eq(1).all() and relevance[2][8:].eq(0).all()


def test_relevant_marks_survive_a_checkpoint_and_old_checkpoints_load():
    fs = FeedbackSet(5, H, W)
    fs.apply(answers())
    state = fs.state_dict()
    again = FeedbackSet(5, H, W)
    again.load_state_dict(state)
    assert torch.equal(again.relevant, fs.relevant)
    old = FeedbackSet(5, H, W)
    old.load_state_dict({k: v for k, v in state.items() if k != "relevant"})
    assert old.relevant.shape == fs.masks.shape and not old.relevant.any()


def test_hint_rewards_the_relevant_region_through_the_network():
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3).train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    relevance = torch.zeros(4, 32, 32)
    relevance[:, 8:24, 8:24] = 1
    pen = Hint(model)(x, relevance, y)
    assert pen.shape == (4,) and ((pen >= 0) & (pen <= 1)).all()
    pen.sum().backward()
    assert model.backbone.features[0].weight.grad.abs().sum() > 0
    unmarked = Hint(model)(x, torch.full((4, 32, 32), -1.0), y)
    assert torch.equal(unmarked, torch.zeros(4))  # nothing said, nothing asked


@pytest.mark.parametrize("size", [32, 64])
def test_penalties_in_unit_range_whatever_the_image_size(size):
    torch.manual_seed(1)
    model = create_classifier("hitl_cnn", 10, 3).train()
    x, y = torch.rand(3, 3, size, size), torch.randint(0, 10, (3,))
    forbidden = torch.zeros(3, size, size)
    forbidden[:, : size // 4, : size // 4] = 1
    for name in ("gradcam", "hint"):
        mask = forbidden if not PENALTIES[name].uses_relevance else torch.where(forbidden.bool(), 0.0, 1.0)
        value = PENALTIES[name](model)(x, mask, y)
        assert ((value >= 0) & (value <= 1)).all(), name


def test_deeplift_baselines(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3).eval()
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    blur = DeepLift(model).attribute(x, target)
    zero = DeepLift(model, baseline="zero").attribute(x, target)
    assert blur.shape == zero.shape == (2, 32, 32) and not torch.allclose(blur, zero)
    with torch.no_grad():  # DeepLIFT's completeness: attributions sum to f(x) − f(baseline)
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1))[:, 0]
    assert torch.allclose(zero.flatten(1).sum(1), gap, rtol=1e-3, atol=1e-3)
    cfg, _ = parse_args(["--runs-dir", str(tmp_path), "--deeplift-baseline", "zero"])
    assert cfg.deeplift_baseline == "zero"


class _CornerReader(torch.nn.Module):
    """Decides by the top-left 4×4 corner through a clamp that saturates: decisive, yet with zero input
    gradient there (what a network can learn to dodge an input-gradient penalty)."""

    def __init__(self, region=(slice(0, 4), slice(0, 4))):
        super().__init__()
        self.scale, self.region = torch.nn.Parameter(torch.tensor(10.0)), region

    def forward(self, x):
        on = torch.clamp(self.scale * (x[:, :, self.region[0], self.region[1]].mean((1, 2, 3)) - 0.5), -1, 1)
        return 3 * torch.stack([on, -on], 1)


def test_counterfactual_penalty_sees_a_saturated_detector_that_rrr_misses():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    x[:, :, :4, :4] = 1.0                       # the "sticker": the reader is saturated on it
    y = torch.zeros(4, dtype=torch.long)
    mask = torch.from_numpy(box(0, 4, 0, 4)).float().expand(4, H, W)
    reader = _CornerReader()
    assert RightReasons(reader)(x, mask, y).abs().max() < 1e-8
    pen = Counterfactual(reader)(x, mask, y)
    assert pen.shape == (4,) and (pen > 0.02).all()
    pen.sum().backward()
    assert reader.scale.grad.abs() > 0         # the penalty reaches the weights
    elsewhere = _CornerReader(region=(slice(6, 10), slice(6, 10)))
    assert torch.equal(Counterfactual(elsewhere)(x, mask, y), torch.zeros(4))
    nothing = Counterfactual(reader)(x, torch.zeros(4, H, W), y)
    assert torch.equal(nothing, torch.zeros(4))
