"""Configuration: layers, strict validation and error messages that name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIG_DIR

from audiopetl.core.config import ConfigError, available_presets, load_config
from audiopetl.study import load_study

BASE = Path("config/config.yaml")
PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiments").glob("*.yaml"))


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def study_error(*args, **kwargs) -> str:
    """The error of a kind-aware check (run when the study is loaded, not by load_config)."""
    with pytest.raises(ConfigError) as info:
        load_study(*args, **kwargs)
    return str(info.value)


def write_preset(name: str, text: str) -> Path:
    path = Path("config/experiments") / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def write_base(text: str) -> Path:
    path = Path("config/other.yaml")
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# valid configurations


def test_there_is_at_least_one_preset():
    assert "quick" in PRESETS


def test_default_config_validates(project):
    cfg = load_config(BASE)
    assert cfg["experiment"] == "default"
    assert cfg["training"]["deterministic"] is True
    assert cfg["features"]["num_mel_bins"] == 128


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates(project, preset):
    cfg = load_config(BASE, preset)
    assert cfg["experiment"] == preset
    assert available_presets(BASE) == PRESETS


def test_preset_overrides_base_and_set_overrides_preset(project):
    cfg = load_config(BASE, "quick", ["training.epochs=1"])
    assert cfg["features"]["target_length"] == 64  # from the preset
    assert cfg["training"]["epochs"] == 1  # from --set
    assert cfg["features"]["num_mel_bins"] == 128  # untouched base value


def test_set_false_gives_a_bool(project):
    cfg = load_config(BASE, overrides=["training.deterministic=false"])
    assert cfg["training"]["deterministic"] is False


# ---------------------------------------------------------------------------------------------
# unknown keys: file, key path and the closest key


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("trainin={epochs: 3}", "training"),
        ("training.epoch=3", "epochs"),
        ("training.specaugment.freq_mas=2", "freq_mask"),
        ("datasets.synthetic.synthetic.clases=3", "classes"),
        ("strategies.lora.rnk=4", "rank"),
        ("models.tiny-ast.architecture.hiden_size=8", "hidden_size"),
        ("cache.row_group=8", "row_group_size"),
    ],
)
def test_unknown_key_from_set(project, override, suggestion):
    message = config_error(BASE, overrides=[override])
    key_path = override.split("=")[0]
    assert f"--set: {key_path}: unknown key (did you mean {suggestion!r}?)" in message


def test_unknown_top_level_key_in_base_file(project):
    text = BASE.read_text(encoding="utf-8") + "\nexperimnt_notes: hello\n"
    path = write_base(text)
    message = config_error(path)
    assert f"{path}: experimnt_notes: unknown key" in message
    assert "did you mean 'experiment'" in message


def test_unknown_nested_key_in_preset_names_the_preset(project):
    path = write_preset("typo", "training:\n  epoch: 3\n")
    message = config_error(BASE, "typo")
    assert f"{path}: training.epoch: unknown key (did you mean 'epochs'?)" in message
    assert "config/config.yaml" not in message


def test_unknown_key_inside_a_dataset_entry(project):
    path = write_preset(
        "mine",
        "datasets:\n"
        "  mine:\n"
        "    kind: folder\n"
        "    folder: {root: x, manifest: null, pattern: 'a', folds: null, pattrn: b}\n",
    )
    message = config_error(BASE, "mine")
    assert f"{path}: datasets.mine.folder.pattrn: unknown key (did you mean 'pattern'?)" in message


def test_unknown_key_inside_a_strategy_entry(project):
    path = write_preset("strat", "strategies:\n  lora:\n    targetz: [q]\n")
    message = config_error(BASE, "strat")
    assert f"{path}: strategies.lora.targetz: unknown key (did you mean 'targets'?)" in message


def test_unknown_key_in_strategy_training_block(project):
    message = config_error(BASE, overrides=["strategies.full.training.epohcs=2"])
    assert "--set: strategies.full.training.epohcs: unknown key (did you mean 'epochs'?)" in message


# ---------------------------------------------------------------------------------------------
# types


@pytest.mark.parametrize("value", ["'False'", '"false"', "no", "off", "yes"])
def test_string_is_not_a_boolean_in_a_file(project, value):
    path = write_preset("boolish", f"training:\n  deterministic: {value}\n")
    message = config_error(BASE, "boolish")
    assert f"{path}: training.deterministic:" in message
    assert "is a str, expected boolean" in message


@pytest.mark.parametrize("value", ["no", "'False'", "off"])
def test_string_is_not_a_boolean_from_set(project, value):
    message = config_error(BASE, overrides=[f"training.deterministic={value}"])
    assert "--set: training.deterministic:" in message
    assert "expected boolean" in message


def test_wrong_type_in_base_file_names_file_and_path(project):
    text = BASE.read_text(encoding="utf-8").replace("  epochs: 12\n", "  epochs: 12.5\n", 1)
    assert "12.5" in text
    path = write_base(text)
    message = config_error(path)
    assert f"{path}: training.epochs: 12.5 is a float, expected integer" in message


def test_wrong_type_in_preset_names_the_preset(project):
    path = write_preset("badtype", "features:\n  target_length: long\n")
    message = config_error(BASE, "badtype")
    assert f"{path}: features.target_length: 'long' is a str, expected integer" in message


def test_wrong_type_from_set_says_set(project):
    message = config_error(BASE, overrides=["training.epochs=three"])
    assert "--set: training.epochs: 'three' is a str, expected integer" in message


def test_bad_enum_suggests(project):
    message = config_error(BASE, overrides=["training.precision=bf61"])
    assert "--set: training.precision: 'bf61' is not one of" in message
    assert "did you mean 'bf16'" in message


def test_malformed_set_says_set(project):
    message = config_error(BASE, overrides=["training.epochs"])
    assert "--set" in message and "KEY.PATH=VALUE" in message


def test_duplicate_yaml_key_in_file(project):
    path = write_preset("dup", "training:\n  epochs: 3\n  epochs: 4\n")
    message = config_error(BASE, "dup")
    assert str(path) in message
    assert "duplicate key 'epochs'" in message


def test_duplicate_yaml_key_in_base(project):
    text = BASE.read_text(encoding="utf-8").replace("  epochs: 12\n", "  epochs: 12\n  epochs: 2\n")
    path = write_base(text)
    message = config_error(path)
    assert str(path) in message and "duplicate key 'epochs'" in message


# ---------------------------------------------------------------------------------------------
# references between sections


def test_study_naming_undefined_strategy(project):
    message = config_error(BASE, overrides=["study.strategies=[full, lorra]"])
    assert "--set: study.strategies[1]: strategy 'lorra' is not defined under strategies" in message
    assert "did you mean 'lora'" in message


def test_study_naming_undefined_dataset_in_preset(project):
    path = write_preset("ds", "study:\n  datasets: [synthetc]\n")
    message = config_error(BASE, "ds")
    assert f"{path}: study.datasets[0]: dataset 'synthetc' is not defined" in message
    assert "did you mean 'synthetic'" in message


def test_pretrain_naming_undefined_dataset(project):
    message = config_error(BASE, overrides=["models.tiny-ast.pretrain.dataset=synthetic-sorce"])
    assert "models.tiny-ast.pretrain.dataset" in message
    assert "did you mean 'synthetic-source'" in message


def test_fold_outside_dataset_folds(project):
    message = study_error(BASE, "quick", ["study.folds=[1, 2, 4]"])
    assert "--set: study.folds[2]: fold 4 is outside dataset 'synthetic'" in message
    assert "1..3" in message


def test_fold_outside_dataset_folds_from_preset(project):
    path = write_preset("folds", "study:\n  folds: [1, 2, 3, 4, 5, 6]\n")
    message = study_error(BASE, "folds")
    assert f"{path}: study.folds[5]: fold 6 is outside" in message


# ---------------------------------------------------------------------------------------------
# presets


def test_unknown_preset_lists_presets(project):
    message = config_error(BASE, "quik")
    assert "no preset named 'quik'" in message
    assert "did you mean 'quick'" in message
    assert "presets: " + ", ".join(PRESETS) in message


def test_missing_config_file(project):
    message = config_error(Path("config/nope.yaml"))
    assert "config/nope.yaml" in message and "not found" in message


# ---------------------------------------------------------------------------------------------
# through the CLI: exit code 2 and the message on stderr


@pytest.mark.parametrize("command", ["fetch", "cache", "data-report"])
def test_cli_config_error_exits_2(project, cli, command):
    result = cli(command, "synthetic", "--set", "training.epoch=3")
    assert result.code == 2
    assert "config error" in result.err
    assert "--set: training.epoch: unknown key (did you mean 'epochs'?)" in result.err
    assert result.out == ""
    assert not Path("data").exists()


def test_cli_unknown_preset_exits_2(project, cli):
    result = cli("fetch", "synthetic", "--experiment", "quik")
    assert result.code == 2
    assert "no preset named 'quik'" in result.err and "quick" in result.err


def test_cli_boolean_string_exits_2(project, cli):
    path = write_preset("boolish", "training:\n  deterministic: 'False'\n")
    result = cli("cache", "synthetic", "--experiment", "boolish")
    assert result.code == 2
    assert f"{path}: training.deterministic: 'False' is a str, expected boolean" in result.err


def test_cli_unknown_dataset_exits_2(project, cli):
    result = cli("fetch", "synthetc", "--experiment", "quick")
    assert result.code == 2
    assert "no dataset named 'synthetc'" in result.err
    assert "did you mean 'synthetic'" in result.err


# ---------------------------------------------------------------------------------------------
# presets that build on others (extends)


def test_a_preset_extends_others_in_order_and_its_own_keys_win(project):
    write_preset("base2", "training:\n  epochs: 7\n  batch_size: 4\nstudy:\n  seeds: [0, 1]\n")
    write_preset(
        "mine",
        "extends: [models, base2]\nexperiment: mine\nstudy:\n  strategies: [full]\n"
        "training:\n  epochs: 2\n",
    )
    cfg = load_study(BASE, "mine").config
    models = load_config(BASE, "models")
    # models' tiny Whisper without copying its block; base2 after models; then its own keys.
    assert cfg["models"]["tiny-whisper"] == models["models"]["tiny-whisper"]
    assert cfg["study"]["models"] == models["study"]["models"]
    assert cfg["study"]["seeds"] == [0, 1]
    assert cfg["study"]["strategies"] == ["full"]
    assert (cfg["training"]["epochs"], cfg["training"]["batch_size"]) == (2, 4)
    assert cfg["experiment"] == "mine" and "extends" not in cfg


def test_an_error_in_an_extended_preset_names_its_file(project):
    base = write_preset("base2", "training:\n  epoch: 3\n")
    write_preset("mine", "extends: [base2]\n")
    message = config_error(BASE, "mine")
    assert f"{base}: training.epoch: unknown key (did you mean 'epochs'?)" in message


@pytest.mark.parametrize(
    ("presets", "message"),
    [
        (
            {"mine": "extends: [modles]\n"},
            "extends: no preset named 'modles' (did you mean 'models'?)",
        ),
        ({"mine": "extends: [mine]\n"}, "extends: 'mine' extends itself (mine -> mine)"),
        (
            {"mine": "extends: [other]\n", "other": "extends: [mine]\n"},
            "extends: 'mine' extends itself (mine -> other -> mine)",
        ),
        ({"mine": "extends: {models: 1}\n"}, "extends: a list of preset names, e.g. [models]"),
    ],
)
def test_extends_that_cannot_resolve_is_one_line(project, presets, message):
    for name, text in presets.items():
        write_preset(name, text)
    found = config_error(BASE, "mine")
    assert message in found and "\n" not in found
