"""The linearised probe (trainer/linearised.py): through it a probe's logits are its image's plus J·v,
exactly, and the batch's own rows come out as without probes."""
from __future__ import annotations

import copy

import pytest
import torch

from trainer.linearised import _ProbeBatchNorm, full_precision_convolutions, linearised_probes
from trainer.model import create_classifier


@pytest.mark.parametrize("name", ["hitl_cnn", "efficientnet_b0"])
def test_probe_follows_the_linearised_network(name):
    """Through the linearised network a probe's logits are the image's plus J·(probe − image), exactly,
    even for a step long enough to cross many ReLU and max-pool kinks (hitl_cnn) or to bend every SiLU
    and squeeze-excite gate (efficientnet)."""
    torch.manual_seed(0)
    model = create_classifier(name, 10, 3).eval()
    x, step = torch.rand(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.autograd.forward_ad.dual_level():
        dual = model(torch.autograd.forward_ad.make_dual(x, step))
        tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    with linearised_probes(model, 4):
        own, probe = model(torch.cat([x, x + step])).chunk(2)
    scale = tangent.abs().max()
    assert (probe - own - tangent).abs().max() <= 1e-3 * scale
    assert (model(x + step) - model(x) - tangent).abs().max() >= 0.1 * scale  # the curvature is there


@pytest.mark.parametrize("name", ["hitl_cnn", "efficientnet_b0"])
def test_probes_leave_the_batch_statistics_alone(name):
    """In train mode the batch's rows are normalised by the batch's own statistics, probes excluded, and
    the running statistics move as in a step without probes: the cross-entropy sees a plain batch."""
    torch.manual_seed(0)
    plain = create_classifier(name, 10, 3).train()
    probed = copy.deepcopy(plain)
    x = torch.rand(8, 3, 32, 32)
    expected = plain(x)
    with linearised_probes(probed, 2):
        got = probed(torch.cat([x, x[-2:] + 10 * torch.randn(2, 3, 32, 32)]))
    assert torch.allclose(got[:8], expected, atol=1e-5)
    assert all(torch.allclose(a, b) for a, b in zip(plain.buffers(), probed.buffers()))


@pytest.mark.parametrize("affine", [True, False])
def test_probe_batch_norm_backward_is_the_derivative_of_its_forward(affine):
    """The hand-written backward (statistics from the batch without its probes, gradient in θ through
    them) against numerical derivatives, channels-last input included."""
    norm = torch.nn.BatchNorm2d(3, affine=affine).double().train()
    for a in (torch.randn(7, 3, 4, 4, dtype=torch.double),
              torch.randn(7, 3, 4, 4, dtype=torch.double).to(memory_format=torch.channels_last)):
        a.requires_grad_(True)
        if affine:
            assert torch.autograd.gradcheck(lambda a, w, b: _ProbeBatchNorm.apply(a, w, b, norm, 2),
                                            (a, norm.weight, norm.bias))
        else:
            assert torch.autograd.gradcheck(lambda a: _ProbeBatchNorm.apply(a, None, None, norm, 2), (a,))


@pytest.mark.parametrize("enabled", [True, False])
def test_full_precision_turns_tf32_convolutions_off_for_the_pass_only(enabled):
    """TF32's 10-bit mantissa would swamp a probe's small difference; the setting comes back after."""
    before = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        with full_precision_convolutions(enabled):
            assert torch.backends.cudnn.allow_tf32 is not enabled
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before
