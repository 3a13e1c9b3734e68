"""Validation metrics: worked examples a user can check by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainer.metrics import classification_metrics


def one_hot_probs(pred, num_classes, confidence=0.8):
    probs = torch.full((len(pred), num_classes), (1 - confidence) / (num_classes - 1))
    probs[torch.arange(len(pred)), torch.tensor(pred)] = confidence
    return probs


def test_metrics_of_a_worked_example():
    # true:  0 0 0 1 1 2 ; predicted: 0 0 1 1 2 2
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    m = classification_metrics(one_hot_probs([0, 0, 1, 1, 2, 2], 3), labels, 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows: true class
    assert m["acc"] == pytest.approx(4 / 6)
    precision = [2 / 2, 1 / 2, 1 / 2]
    recall = [2 / 3, 1 / 2, 1 / 1]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert m["precision"] == pytest.approx(sum(precision) / 3)
    assert m["recall"] == pytest.approx(sum(recall) / 3)
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert m["loss"] == pytest.approx(F.nll_loss(one_hot_probs([0, 0, 1, 1, 2, 2], 3).log(), labels).item(), rel=1e-6)


def test_a_class_absent_from_the_labels_does_not_drag_the_macro_average():
    labels = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(one_hot_probs([0, 0, 1, 1], 4), labels, 4)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert len(m["confusion"]) == 4


def test_a_class_never_predicted_has_zero_precision_and_an_underflowed_softmax_a_finite_loss():
    probs = torch.zeros(4, 3)
    probs[:, 0] = 1  # the model is certain, and wrong on three of four images
    m = classification_metrics(probs, torch.tensor([1, 1, 0, 2]), 3)
    assert m["precision"] == pytest.approx((1 / 4 + 0 + 0) / 3)
    assert math.isfinite(m["loss"]) and m["loss"] == pytest.approx(3 / 4 * -math.log(1e-12), rel=1e-6)
