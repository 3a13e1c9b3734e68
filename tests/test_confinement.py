"""A page visitor's paths: every path-valued trainer option, typed on the Runs page or held in a --config
file, must lie inside the dashboard's allowed folders (through links too), is checked before anything is
opened, and a config file's values never reach the page."""
from __future__ import annotations

import dataclasses
import json

import pytest

from dashboard import launcher
from trainer import cli, confine
from trainer.cli import CLIError, parse_args
from trainer.config import TrainConfig

SECRET = "TOPSECRET-lr-123"


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


@pytest.fixture(scope="module")
def options():
    """The options as the dashboard gets them (``hitl-train --options-json`` in a subprocess)."""
    return launcher.trainer_options()["options"]


@pytest.fixture
def place(tmp_path):
    """An allowed folder, a folder outside it, and a link inside the allowed one that leads out."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link-out").symlink_to(outside)
    for folder in (allowed, outside):
        (folder / "best.pt").write_bytes(b"not read")
        (folder / "c.yaml").write_text("epochs: 2\n")
    return allowed, outside


def path_value_for(dest: str, folder) -> str:
    """A value of the path option ``dest`` in ``folder`` that the trainer's own checks accept."""
    return str(folder / {"init_from": "best.pt", "config": "c.yaml"}.get(dest, "data"))


def one_line(message: str) -> str:
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- which options are paths

def test_every_option_naming_a_file_or_folder_is_marked_as_a_path(parser, options):
    paths = cli.path_options(parser)
    assert {"data_dir", "init_from", "runs_dir", "config"} <= set(paths)
    looks_like_a_path = [a.dest for a in parser._actions
                         if a.dest.endswith(("_dir", "_from", "_file", "_path", "config"))
                         or a.metavar in ("FILE", "DIR", "PATH", "FOLDER", "CHECKPOINT")]
    assert set(looks_like_a_path) <= set(paths)
    # the settings a config file may hold are the parser's options, so its path keys are these
    path_fields = {f.name for f in dataclasses.fields(TrainConfig)
                   if f.name.endswith(("_dir", "_from", "_file", "_path"))}
    assert path_fields <= set(paths)
    assert {o["name"] for o in options if o.get("path")} == set(paths)  # what the dashboard is told


# --------------------------------------------------------------------------- typed on the Runs page

def typed_path_options(options):
    return [(o, flag) for o in options if o.get("path") for flag in o["flags"]]


def test_every_typed_path_option_is_confined(options, place):
    allowed, outside = place
    checked = set()
    for option, flag in typed_path_options(options):
        checked.add(option["name"])
        inside_value = path_value_for(option["name"], allowed)
        escapes = [path_value_for(option["name"], outside), path_value_for(option["name"], allowed / "link-out"),
                   f"{allowed}/../outside/x"]
        if option["name"] in launcher.FORM_ONLY:  # the runs folder: never from the options field
            for value in [inside_value, *escapes]:
                with pytest.raises(launcher.LaunchError, match="cannot be given here"):
                    launcher.check_extra_args([flag, value], options, [allowed])
            continue
        for args in ([flag, inside_value], [f"{flag}={inside_value}"]):
            launcher.check_extra_args(args, options, [allowed])
        for value in escapes:
            for args in ([flag, value], [f"{flag}={value}"]):
                with pytest.raises(launcher.LaunchError, match="outside the folders this dashboard may read") as e:
                    launcher.check_extra_args(args, options, [allowed])
                one_line(str(e.value))
    assert {"data_dir", "init_from", "runs_dir", "config"} <= checked


def test_a_config_file_outside_the_allowed_folders_is_refused_on_the_page(tmp_path):
    secret = tmp_path / "x" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text(f"lr: {SECRET}\n")
    runs = tmp_path / "runs"
    for typed in ([f"--config={secret}"], ["--config", "/etc/passwd"], ["--config", str(runs / ".." / "x" / "secret.yaml")]):
        with pytest.raises(launcher.LaunchError, match="--config.*outside the folders") as refused:
            launcher.start_run(runs, request(extra_args=typed), allowed_roots=[tmp_path / "data"])
        assert SECRET not in str(refused.value)
    assert not runs.exists() or not any(runs.iterdir())  # nothing created


def request(**kw) -> launcher.RunRequest:
    fields = dict(title="visitor", dataset="decoy-digits", model="hitl_cnn", epochs=1, sampling="random",
                  queries_per_epoch=1, query_start_epoch=1, penalty_weight=1.0, saliency="saliency",
                  annotator="none")
    return launcher.RunRequest(**{**fields, **kw})


def test_paths_inside_a_config_file_are_confined_by_the_trainer_the_page_starts(tmp_path):
    """The page cannot read the file before the trainer does, so the trainer it starts applies the same
    rule (with the allowed folders it was started with) and its one-line error is what the page shows."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    runs = tmp_path / "runs"
    (data / "escape.yaml").write_text(f"data_dir: {outside}\ndataset: folder\n")
    (data / "leak.yaml").write_text(f"lr: {SECRET}\n")
    for name, expected in (("escape.yaml", "data_dir is outside the folders"), ("leak.yaml", "lr: expected a float")):
        run = launcher.start_run(runs, request(title=name.split(".")[0], extra_args=["--config", str(data / name)]),
                                 allowed_roots=[data])
        outcome = launcher.await_start(run, timeout=120)
        assert outcome.state == "exited", outcome
        assert expected in outcome.message and str(data / name) in outcome.message
        assert str(outside) not in outcome.message and SECRET not in outcome.message
        log = run.path / "trainer.log"
        assert SECRET not in log.read_text() and str(outside) not in log.read_text().split("\n", 1)[1]


# --------------------------------------------------------------------------- in the trainer, under a dashboard

@pytest.fixture
def confined(monkeypatch, place, tmp_path):
    allowed, _ = place
    monkeypatch.setenv(confine.ROOTS_ENV, str(allowed))
    monkeypatch.chdir(tmp_path)
    return place


def test_every_path_flag_is_confined_in_the_trainer(parser, confined, monkeypatch):
    allowed, outside = confined
    opened = []
    reader = cli._read_config_file
    monkeypatch.setattr(cli, "_read_config_file", lambda path: opened.append(path) or reader(path))
    base = ["-md", str(allowed / "runs")]
    for dest, flag in cli.path_options(parser).items():
        for escape in (outside, allowed / "link-out"):
            with pytest.raises(CLIError, match=f"{flag} .* is outside the folders") as e:
                parse_args(base + [flag, path_value_for(dest, escape)])
            one_line(str(e.value))
        cfg, _ = parse_args(base + [flag, path_value_for(dest, allowed)])
        if dest != "config":
            assert getattr(cfg, dest) == path_value_for(dest, allowed)
    assert opened == [allowed / "c.yaml"]  # only the config file inside, never one outside
    with pytest.raises(CLIError, match="--runs-dir 'checkpoints' is outside"):  # the default is checked too
        parse_args([])


def test_every_path_a_config_file_can_hold_is_confined_without_quoting_it(parser, confined):
    allowed, outside = confined
    keys = [dest for dest in cli.path_options(parser) if dest in {f.name for f in dataclasses.fields(TrainConfig)}]
    assert {"data_dir", "init_from", "runs_dir"} <= set(keys)
    config = allowed / "settings.json"
    base = ["-md", str(allowed / "runs"), "--config", str(config)]
    for key in keys:
        if key in cli.NOT_FROM_CONFIG_FILES:  # never taken from a file: a run's folder comes from flags
            config.write_text(json.dumps({key: str(outside)}))
            cfg, _ = parse_args(base)
            assert getattr(cfg, key) != str(outside)
            continue
        for escape in (outside, allowed / "link-out"):
            config.write_text(json.dumps({key: path_value_for(key, escape)}))
            with pytest.raises(CLIError, match=f"settings.json: {key} is outside the folders") as e:
                parse_args(base)
            assert str(escape) not in one_line(str(e.value))
        config.write_text(json.dumps({key: path_value_for(key, allowed)}))
        cfg, _ = parse_args(base)
        assert getattr(cfg, key) == path_value_for(key, allowed)


def test_without_a_dashboard_the_trainer_reads_wherever_its_user_points(tmp_path, monkeypatch):
    monkeypatch.delenv(confine.ROOTS_ENV, raising=False)
    config = tmp_path / "elsewhere.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    cfg, _ = parse_args(["--config", str(config), "-md", str(tmp_path / "runs")])
    assert cfg.data_dir == str(tmp_path / "data")


@pytest.mark.parametrize("text", [f"lr: {SECRET}\n", f"sampling: {SECRET}\n", f"seed: {SECRET}\n",
                                  f"prior_masks: {SECRET}\n", f"epochs: [1, {SECRET}\n", f"lr: *{SECRET}\n",
                                  f"lr: !!python/name:{SECRET} x\n"])
def test_a_config_files_values_are_never_quoted(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CLIError) as e:
        parse_args(["--config", str(path), "-md", str(tmp_path)])
    assert "bad.yaml" in one_line(str(e.value)) and SECRET not in str(e.value)


def test_a_refused_config_value_names_its_key_and_the_reason(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"lr: {SECRET}\n")
    with pytest.raises(CLIError, match=r"^--config .*bad.yaml: lr: expected a float$"):
        parse_args(["--config", str(path)])
    path.write_text("sampling: most_confident\n")
    with pytest.raises(CLIError, match=r"sampling: invalid choice \(choose from .*'random'"):
        parse_args(["--config", str(path)])


def test_the_rule_resolves_links_and_home(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "up").symlink_to(tmp_path)
    assert confine.is_inside(allowed / "sub" / "x", [allowed])
    assert not confine.is_inside(allowed / "sub" / "up" / "x", [allowed])
    assert not confine.is_inside("", [allowed]) and not confine.is_inside("a\0b", [allowed])
    monkeypatch.chdir(allowed)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert confine.is_inside("sub", [allowed]) and not confine.is_inside("~/allowed-not", [allowed])
    env = confine.roots_env([allowed / "sub" / "up"])
    assert confine.roots_from_env(env) == [tmp_path.resolve()]
