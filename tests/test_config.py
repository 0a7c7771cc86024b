"""The typed config mechanism: unknown keys, wrong types, dotted overrides, CLI error handling."""
from __future__ import annotations

import pytest
import yaml

from pipelines.cli import main
from pipelines.config import ExperimentConfig, config_from_dict, load_config
from preprocessing.schema import ConfigError, apply_overrides, parse_dataclass, parse_override, to_dict
from preprocessing.config import DataConfig


def test_defaults_round_trip():
    cfg = config_from_dict({})
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.name == "mixste"
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_unknown_key_is_named_with_alternatives():
    with pytest.raises(ConfigError, match=r"unknown key 'data.windows.frams'.*frames"):
        config_from_dict({"data": {"windows": {"frams": 27}}})
    with pytest.raises(ConfigError, match=r"unknown key 'model.dpeth'"):
        config_from_dict({"model": {"name": "mixste", "dpeth": 3}})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"^windows.frames: got 'x', expected an integer"):
        parse_dataclass(DataConfig, {"windows": {"frames": "x"}})
    with pytest.raises(ConfigError, match=r"train.use_gpu: got 1, expected true or false"):
        config_from_dict({"train": {"use_gpu": 1}})
    with pytest.raises(ConfigError, match=r"data.windows.mode: got 'frames'"):
        config_from_dict({"data": {"windows": {"mode": "frames"}}})
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'"):
        config_from_dict({"model": {"name": "resnet"}})


def test_validate_rules():
    with pytest.raises(ConfigError, match="windows.frames must be >= 1"):
        config_from_dict({"data": {"windows": {"frames": 0}}})
    with pytest.raises(ConfigError, match="must be odd for seq2frame"):
        parse_dataclass(DataConfig, {"windows": {"mode": "seq2frame", "frames": 8}})
    with pytest.raises(ConfigError, match=r"'mixste' is seq2seq but data.windows.mode is 'seq2frame'"):
        config_from_dict({"data": {"windows": {"mode": "seq2frame", "frames": 9}}})


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("data.source.train_subjects=[S1, S5]") == (
        ["data", "source", "train_subjects"], ["S1", "S5"]
    )
    assert parse_override("train.storage_path=s3://bucket/runs.v2")[1] == "s3://bucket/runs.v2"
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "data.windows.frames=27"])
    assert raw == {"train": {"epochs": 5}, "data": {"windows": {"frames": 27}}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_load_config_names_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 2}, "model": {"name": "mixste", "depth": 2}}))
    cfg = load_config(str(path), ["train.epochs=7", "model.dim=64"])
    assert cfg.train.epochs == 7 and cfg.model.depth == 2 and cfg.model.dim == 64
    with pytest.raises(ConfigError, match=str(path)):
        load_config(str(path), ["train.epochz=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_to_dict_is_plain_data():
    data = to_dict(config_from_dict({}))
    yaml.safe_dump(data)  # raises if any non-plain object is left


def test_cli_reports_config_errors_with_exit_2(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("train: {epochs: 2, bogus: 1}\n")
    assert main(["preprocess", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.bogus'" in err and str(path) in err


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("preprocess", "train", "evaluate", "tune", "infer", "submit"):
        assert command in out
