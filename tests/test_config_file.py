"""hitl-train --config: a lab re-runs a colleague's run from its config.json, flags override the file."""
import json

import pytest

from trainer import protocol
from trainer.cli import CLIError, main as cli_main, parse_args
from trainer.config import TrainConfig


def test_a_runs_config_json_reproduces_its_settings(tmp_path):
    cfg, _ = parse_args(["-ds", "synthetic-lesions", "--lr", "0.01", "--weight-decay", "0", "-ov", "false",
                         "--task", "melanoma", "--track-images", "3", "--lambda", "2.5", "-md", str(tmp_path),
                         "-td", "alice"])
    run = protocol.RunDir(tmp_path / "alice")
    protocol.write_config(run, cfg.to_dict())
    again, resume = parse_args(["--config", str(run.config), "-md", str(tmp_path), "-td", "bob"])
    assert not resume and again.title == "bob"
    assert {**again.to_dict(), "title": "alice"} == cfg.to_dict()


def test_flags_override_the_file_and_yaml_and_toml_both_work(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlr: 0.005\nsampling: random\n")
    (tmp_path / "c.toml").write_text('epochs = 3\nlr = 0.005\nsampling = "random"\n')
    for name in ("c.yaml", "c.toml"):
        cfg, _ = parse_args(["--config", str(tmp_path / name), "-E", "5"])
        assert (cfg.epochs, cfg.lr, cfg.sampling) == (5, 0.005, "random")
        assert cfg.batch_size == TrainConfig().batch_size  # what the file does not set keeps its default


@pytest.mark.parametrize("text, message", [
    ("lr: -1\n", "lr.*must be positive"),
    ("learning_rate: 0.1\n", "unknown setting 'learning_rate'"),
    ("sampling: most_confident\n", "invalid choice"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("epochs: [1, 2\n", "not valid YAML"),
])
def test_a_bad_config_file_is_refused_in_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CLIError, match=message) as e:
        parse_args(["--config", str(path)])
    assert "bad.yaml" in str(e.value) and "\n" not in str(e.value)


def test_config_with_resume_is_refused(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 2}))
    assert cli_main(["--config", str(tmp_path / "c.json"), "--resume", "-td", "x", "-md", str(tmp_path)]) == 2
    assert "cannot be combined" in capsys.readouterr().err
