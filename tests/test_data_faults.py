"""Data sets under faults an adversary would try (damaged, misnamed, duplicated and skipped files, tiny
fractions), and a seeded run that must not depend on whether the data set's cache already existed."""
from __future__ import annotations

import torch

import trainer.data.synthetic as synthetic
from trainer.config import TrainConfig
from trainer.data import DataRequest, build_dataset
from trainer.train import Trainer


def test_same_seed_gives_the_same_initial_weights_with_or_without_the_data_cache(tmp_path, monkeypatch):
    """Trainer order: manual_seed, build the data set, create the model. Building (and caching) the
    data must not draw from the global generator, or the first run of a seed differs from the rest."""
    monkeypatch.setattr(synthetic, "DATA_ROOT", tmp_path / "datasets")

    def initial_weights(title: str) -> dict:
        cfg = TrainConfig(dataset="decoy-digits", image_size=16, seed=5, device="cpu",
                          runs_dir=str(tmp_path / "runs"), title=title)
        return Trainer(cfg, log=lambda *a: None).model.state_dict()

    fresh = initial_weights("fresh-cache")
    assert len(list((tmp_path / "datasets" / "decoy-digits").glob("*.pt"))) == 1
    cached = initial_weights("existing-cache")
    assert fresh.keys() == cached.keys()
    for name in fresh:
        assert torch.equal(fresh[name], cached[name]), name

    torch.manual_seed(5)
    expected = torch.get_rng_state()
    build_dataset("decoy-digits", DataRequest(None, 16, seed=6))  # a seed whose cache does not exist yet
    assert torch.equal(torch.get_rng_state(), expected)
