"""The attention-pooling head (trainer/head.py): it starts as average pooling (so a trained model keeps
its predictions when the head is added), its weights are a distribution over positions, they explain
(``--saliency attention``) and take feedback (``--penalty attention``) through the right parameters."""
from __future__ import annotations

import io

import pytest
import torch

from trainer.cli import CLIError, parse_args
from trainer.explain import Attention
from trainer.head import AttentionPool, HeadError
from trainer.model import ModelError, create_classifier, load_weights
from trainer.penalty import AttentionPenalty


def saved(model, path):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict()}, buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def pair(tmp_path):
    """A head-less model and the same weights with an attention head added by --init-from."""
    torch.manual_seed(0)
    plain = create_classifier("hitl_cnn", 10, 3).eval()
    attended = create_classifier("hitl_cnn", 10, 3, head="attention").eval()
    load_weights(attended, saved(plain, tmp_path / "plain.pt"))
    return plain, attended


def test_a_new_head_is_average_pooling_so_predictions_do_not_change(pair):
    plain, attended = pair
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), attended(x), atol=1e-5)
        w = attended.attention_map(x)
    assert w.shape == (4, 4, 4)  # the small CNN's 4×4 feature map at 32 px
    assert torch.allclose(w.sum(dim=(1, 2)), torch.ones(4))
    assert torch.allclose(w, torch.full_like(w, 1 / 16))


def test_attention_is_an_explanation_at_image_size(pair):
    _, attended = pair
    x = torch.rand(3, 3, 32, 32)
    maps = Attention(attended).attribute(x, torch.zeros(3, dtype=torch.long))
    assert maps.shape == (3, 32, 32) and (maps >= 0).all()


def test_attention_penalty_trains_the_head_and_leaves_the_classifier_alone(pair):
    _, model = pair
    model.train()
    x = torch.rand(4, 3, 32, 32)
    mask = torch.zeros(4, 32, 32)
    mask[:, :16, :16] = 1  # a quarter of the image: a quarter of the uniform attention
    pen = AttentionPenalty(model)(x, mask, torch.zeros(4, dtype=torch.long))
    assert pen.shape == (4,) and torch.allclose(pen, torch.full((4,), 0.25))
    pen.sum().backward()
    score = model.attention_pool.score
    assert score[-1].weight.grad.abs().sum() > 0  # the scores learn to look away
    assert model.backbone.fc.weight.grad is None  # the classifier is not what the penalty is about
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.features.parameters())


def test_head_only_accepts_channel_first_feature_maps():
    pool = AttentionPool(64)
    with pytest.raises(HeadError, match="N×64×H×W"):
        pool(torch.rand(2, 49, 64))  # transformer tokens
    with pytest.raises(HeadError, match="N×64×H×W"):
        pool(torch.rand(2, 7, 7, 64))  # channels last
    with pytest.raises(HeadError, match="--head attention"):
        create_classifier("hitl_cnn", 10, 3).attention_map(torch.rand(1, 3, 32, 32))


def test_init_from_refuses_weights_of_another_model(tmp_path):
    other = create_classifier("hitl_cnn", 5, 3)
    with pytest.raises(ModelError, match="does not fit this model"):
        load_weights(create_classifier("hitl_cnn", 10, 3, head="attention"), saved(other, tmp_path / "five.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(create_classifier("hitl_cnn", 10, 3), tmp_path / "junk.pt")


def test_cli_refuses_attention_without_the_head(tmp_path):
    base = ["--runs-dir", str(tmp_path)]
    with pytest.raises(CLIError, match="--saliency attention needs --head attention"):
        parse_args(base + ["--saliency", "attention"])
    with pytest.raises(CLIError, match="--penalty attention needs --head attention"):
        parse_args(base + ["--penalty", "attention"])
    with pytest.raises(CLIError, match="--init-from: no checkpoint"):
        parse_args(base + ["--head", "attention", "--init-from", str(tmp_path / "missing.pt")])
    cfg, _ = parse_args(base + ["--head", "attention", "--saliency", "attention", "--penalty", "attention"])
    assert (cfg.head, cfg.saliency, cfg.penalty) == ("attention", "attention", "attention")


def test_resume_cannot_swap_the_head(tmp_path):
    from trainer import protocol
    from trainer.config import TrainConfig

    run = protocol.RunDir(tmp_path / "r")
    protocol.write_config(run, TrainConfig(runs_dir=str(tmp_path), title="r").to_dict())
    with pytest.raises(CLIError, match="--head cannot change on --resume.*--init-from"):
        parse_args(["--runs-dir", str(tmp_path), "--title", "r", "--resume", "--head", "attention"])
