"""Tests for llcv.settings: validation per section and the one precedence order.

defaults < base (a resumed checkpoint's settings) < config file < calibration file (sampler
fields only) < flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from llcv.errors import SettingsError
from llcv.settings import (
    AUTO_CALIBRATION_FIELDS,
    CALIBRATION_FIELDS,
    CalibrateSettings,
    DataSettings,
    SamplerSettings,
    TrainSettings,
    load_settings,
    read_calibration,
    read_config,
    validate_section,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _calibration(path: Path, **values) -> Path:
    recommended = {"epsilon": 3e-5, "gamma": 300.0, "nbeta": 7.0, "sampler": "rmsprop_sgld", **values}
    path.write_text(json.dumps(recommended))
    return path


def test_no_config_gives_the_documented_defaults():
    settings = load_settings(("data", "model", "train", "sampler"))
    assert settings.data == DataSettings()
    assert (settings.data.dataset, settings.data.num_workers, settings.data.seed) == ("digits", 0, 0)
    assert settings.model.name == "smallcnn" and settings.model.stem is None
    assert settings.train.epochs == 10 and settings.train.checkpoints_dir == Path("checkpoints")
    assert settings.sampler.epsilon == 1e-4 and settings.sampler.nbeta == "data" and settings.sampler.num_burnin_steps == "auto"


def test_an_unset_nbeta_from_before_the_data_rule_reads_as_the_batch_rule():
    # settings.json, records and recommended.json before llcv 0.10 wrote null for devinterp's default
    assert SamplerSettings(nbeta=None).nbeta == "batch"
    assert SamplerSettings.model_validate_json('{"nbeta": null}').nbeta == "batch"
    assert SamplerSettings(nbeta="data").nbeta == "data" and SamplerSettings(nbeta=12).nbeta == 12.0


@pytest.mark.parametrize(
    "field, value, expected",
    [("nbeta", "2.5", 2.5), ("nbeta", "batch", "batch"), ("num_burnin_steps", "auto", "auto"), ("num_burnin_steps", "30", 30)],
)
def test_nbeta_and_the_burn_in_take_a_word_or_a_number_as_flags_give_them(field, value, expected):
    assert load_settings(("sampler",), overrides={"sampler": {field: value}}).sampler.model_dump()[field] == expected


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("nbeta", "wbic", "sampler.nbeta: must be data, batch or a positive number (got 'wbic')"),
        ("nbeta", 0, "sampler.nbeta: must be data, batch or a positive number (got 0)"),
        ("num_burnin_steps", "soon", "sampler.num_burnin_steps: must be auto or a whole number of steps, 0 or more (got 'soon')"),
        ("num_burnin_steps", -3, "sampler.num_burnin_steps: must be auto or a whole number of steps, 0 or more (got -3)"),
    ],
)
def test_a_bad_nbeta_or_burn_in_gets_one_line_saying_what_it_takes(field, value, message):
    with pytest.raises(SettingsError) as raised:
        validate_section("sampler", {field: value})
    assert str(raised.value) == message


def test_only_the_requested_sections_are_resolved(tmp_path):
    # [sampler] holds an invalid value, but a command that does not use it must not care.
    config = _write(tmp_path / "c.toml", "[train]\nepochs = 3\n[sampler]\nepsilon = -1.0\n")
    settings = load_settings(("train",), config=config)
    assert settings.train.epochs == 3
    assert settings.data is None and settings.sampler is None
    with pytest.raises(SettingsError, match="sampler.epsilon"):
        load_settings(("sampler",), config=config)


def test_precedence_defaults_base_config_flags(tmp_path):
    config = _write(
        tmp_path / "c.toml",
        '[data]\ndataset = "synthetic"\n[train]\nepochs = 3\nbatch_size = 32\n',
    )
    base = {"train": {"epochs": 7, "lr": 0.2, "batch_size": 16}, "data": {"seed": 5}}
    settings = load_settings(
        ("data", "train"),
        config=config,
        base=base,
        overrides={"train": {"epochs": 2, "lr": None}, "data": {"dataset": None}},
    )
    assert settings.train.epochs == 2  # flag beats config and base
    assert settings.train.batch_size == 32  # config beats base
    assert settings.train.lr == 0.2  # base beats the default; a None flag means "not given"
    assert settings.train.momentum == 0.9  # nobody set it: the default
    assert settings.data.dataset == "synthetic"  # config, the None flag does not erase it
    assert settings.data.seed == 5  # base


def test_calibration_sits_between_config_and_flags(tmp_path):
    config = _write(tmp_path / "c.toml", "[sampler]\nepsilon = 1e-3\ngamma = 10.0\nnum_draws = 50\nnbeta = 2.0\n")
    calibration = _calibration(tmp_path / "recommended.json")
    settings = load_settings(
        ("sampler",), config=config, calibration=calibration, overrides={"sampler": {"gamma": 5.0}}
    )
    sampler = settings.sampler
    assert sampler.epsilon == 3e-5  # calibration beats config
    assert sampler.nbeta == 7.0 and sampler.sampler == "rmsprop_sgld"
    assert sampler.gamma == 5.0  # the flag beats calibration
    assert sampler.num_draws == 50  # not calibrated: the config still holds


def test_calibration_carries_the_burn_in_its_sweep_row_qualified_with(tmp_path):
    config = _write(tmp_path / "c.toml", "[sampler]\nnum_burnin_steps = 7\n")
    calibrated = _calibration(tmp_path / "recommended.json", num_burnin_steps=250)
    assert load_settings(("sampler",), config=config, calibration=calibrated).sampler.num_burnin_steps == 250
    flagged = load_settings(("sampler",), config=config, calibration=calibrated, overrides={"sampler": {"num_burnin_steps": 3}})
    assert flagged.sampler.num_burnin_steps == 3
    # a recommended.json from before llcv 0.7 has no burn-in: the config's stays
    legacy = _calibration(tmp_path / "legacy.json")
    assert load_settings(("sampler",), config=config, calibration=legacy).sampler.num_burnin_steps == 7


def test_calibration_only_touches_the_sampler(tmp_path):
    calibration = _calibration(tmp_path / "recommended.json")
    settings = load_settings(("train",), calibration=calibration)
    assert settings.train == TrainSettings()


def test_a_calibration_that_left_nbeta_unset_keeps_the_batch_rule_it_meant(tmp_path):
    calibration = _calibration(tmp_path / "recommended.json", nbeta=None)
    assert load_settings(("sampler",), calibration=calibration).sampler.nbeta == "batch"


@pytest.mark.parametrize(
    "content",
    [
        {"epsilon": 1e-5, "gamma": 100.0, "nbeta": 2.0},  # sampler missing
        {"epsilon": 1e-5, "gamma": 100.0, "nbeta": 2.0, "sampler": "sgld", "num_draws": 9},  # one too many
        [1e-5, 100.0, 2.0, "sgld"],
    ],
    ids=["missing-field", "extra-field", "not-an-object"],
)
def test_calibration_must_hold_exactly_its_fields(tmp_path, content):
    path = tmp_path / "recommended.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SettingsError) as raised:
        load_settings(("sampler",), calibration=path)
    message = str(raised.value)
    assert str(path) in message and all(field in message for field in CALIBRATION_FIELDS)


# recommended.json of `calibrate auto`: the sampler fields its search decided, and notes on why.
AUTO_RECOMMENDED = {
    "epsilon": 2e-5, "gamma": 40.0, "nbeta": "data", "sampler": "sgld", "num_burnin_steps": 120, "batch_size": 64,
    "num_draws": 300, "num_chains": 4, "source": "calibrate auto", "reason": "epsilon=2e-05, gamma=40: ...",
    "sensitivity": [{"knob": "gamma", "value": 40.0, "changed_to": 20.0}], "settings_dependent": [], "checkpoint": "step_00000016.pt",
}  # fmt: skip


def test_an_auto_calibration_sets_its_sampler_fields_and_leaves_its_notes_out(tmp_path):
    path = tmp_path / "recommended.json"
    path.write_text(json.dumps(AUTO_RECOMMENDED))
    assert read_calibration(path) == {field: AUTO_RECOMMENDED[field] for field in AUTO_CALIBRATION_FIELDS}
    config = _write(tmp_path / "c.toml", "[sampler]\nnum_draws = 50\nseed = 3\nbatch_size = 32\n")
    sampler = load_settings(("sampler",), config=config, calibration=path, overrides={"sampler": {"num_chains": 2}}).sampler
    assert (sampler.epsilon, sampler.gamma, sampler.nbeta, sampler.num_burnin_steps) == (2e-5, 40.0, "data", 120)
    assert (sampler.batch_size, sampler.num_draws, sampler.num_chains, sampler.seed) == (64, 300, 2, 3)  # the flag wins, the config keeps the rest
    notes = {field: AUTO_RECOMMENDED[field] for field in AUTO_CALIBRATION_FIELDS}  # the notes are optional
    path.write_text(json.dumps(notes))
    assert read_calibration(path) == notes


@pytest.mark.parametrize("extra", [{"seed": 1}, {"notes": "hand-written"}], ids=["another-sampler-field", "unknown-key"])
def test_an_auto_calibration_with_any_other_key_is_refused(tmp_path, extra):
    path = tmp_path / "recommended.json"
    path.write_text(json.dumps({**AUTO_RECOMMENDED, **extra}))
    with pytest.raises(SettingsError) as raised:
        load_settings(("sampler",), calibration=path)
    message = str(raised.value)
    assert str(path) in message and "calibrate auto" in message and next(iter(extra)) in message


def test_the_automatic_budget_defaults_to_the_searchs(tmp_path):
    from llcv.calibration import Budget

    assert (CalibrateSettings().budget_steps, CalibrateSettings().budget_seconds) == (Budget().chain_steps, Budget().seconds) != (None, None)
    estimate = validate_section("estimate", {"calibrate": True, "calibrate_on": "1000"})
    assert estimate.calibrate is True and estimate.calibrate_on == 1000  # a step, as the flag's text gives it
    assert validate_section("estimate", {"calibrate_on": "ckpts/step_00000016.pt"}).calibrate_on == Path("ckpts/step_00000016.pt")


def test_unreadable_calibration_files_are_named(tmp_path):
    with pytest.raises(SettingsError, match="missing.json.*does not exist"):
        load_settings(("sampler",), calibration=tmp_path / "missing.json")
    broken = _write(tmp_path / "broken.json", "{epsilon: ")
    with pytest.raises(SettingsError, match="broken.json"):
        load_settings(("sampler",), calibration=broken)


def test_an_invalid_calibrated_value_names_the_field(tmp_path):
    calibration = _calibration(tmp_path / "recommended.json", epsilon=-1.0)
    with pytest.raises(SettingsError, match=r"sampler\.epsilon"):
        load_settings(("sampler",), calibration=calibration)


def test_unknown_key_is_an_error_naming_it(tmp_path):
    config = _write(tmp_path / "c.toml", "[train]\nepochz = 3\n")
    with pytest.raises(SettingsError, match=r"train\.epochz: unknown setting"):
        load_settings(("train",), config=config)


def test_every_invalid_field_is_reported_on_its_own_line(tmp_path):
    config = _write(tmp_path / "c.toml", '[train]\nepochs = "ten"\nlr = -1.0\noptimizer = "lbfgs"\n')
    with pytest.raises(SettingsError) as raised:
        load_settings(("train",), config=config)
    lines = str(raised.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("train.epochs:") and "'ten'" in lines[0]
    assert lines[1].startswith("train.lr:") and "-1.0" in lines[1]
    assert lines[2].startswith("train.optimizer:") and "'lbfgs'" in lines[2]


@pytest.mark.parametrize(
    "section, values, field",
    [
        ("data", {"dataset": "imagenet21k"}, "data.dataset"),
        ("data", {"num_workers": -1}, "data.num_workers"),
        ("model", {"name": "vgg11"}, "model.name"),
        ("model", {"stem": "wide"}, "model.stem"),
        ("train", {"epochs": 0}, "train.epochs"),
        ("train", {"epochs": -3}, "train.epochs"),
        ("train", {"momentum": 1.0}, "train.momentum"),
        ("train", {"step_factor": 0.0}, "train.step_factor"),
        ("train", {"device": "gpu"}, "train.device"),
        ("train", {"device": "cuda:x"}, "train.device"),
        ("sampler", {"num_chains": 0}, "sampler.num_chains"),
        ("sampler", {"bn_mode": "frozen"}, "sampler.bn_mode"),
        ("sampler", {"gamma": -1.0}, "sampler.gamma"),
    ],
)
def test_invalid_values_name_their_field(section, values, field):
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        validate_section(section, values)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(SettingsError) as raised:
        validate_section("model", {"name": "vgg11"})
    assert all(name in str(raised.value) for name in ("smallcnn", "resnet18", "resnet50"))
    with pytest.raises(SettingsError) as raised:
        validate_section("data", {"dataset": "imagenet21k"})
    assert all(name in str(raised.value) for name in ("digits", "synthetic", "cifar10"))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_that_validate(device):
    assert validate_section("train", {"device": device}).device == device


def test_settings_are_frozen():
    settings = TrainSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.epochs = 3


def test_json_dict_round_trips_through_base(tmp_path):
    original = load_settings(
        ("data", "model", "train"),
        overrides={
            "data": {"dataset": "synthetic", "data_dir": tmp_path},
            "model": {"stem": "cifar"},
            "train": {"epochs": 4, "resume_from_checkpoint": tmp_path / "step_00000001.pt"},
        },
    )
    stored = json.loads(json.dumps(original.to_json_dict()))  # what a checkpoint holds
    assert "stem" in stored["model"] and "image_size" not in stored["data"]  # None fields are left out
    assert load_settings(("data", "model", "train"), base=stored) == original


@pytest.mark.parametrize(
    "content, message",
    [
        ("[train\nepochs = 3\n", "is not valid TOML"),
        ("train = 3\n", r"\[train\] must be a table"),
        (b"[train]\nseed = 1 # \xff\xfe\n", "config file"),
    ],
    ids=["invalid-toml", "section-not-a-table", "not-utf8"],
)
def test_malformed_config_files_are_named(tmp_path, content, message):
    path = tmp_path / "c.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(("train",), config=path)
    assert str(path) in str(raised.value)


def test_missing_config_file_and_directory_are_named(tmp_path):
    with pytest.raises(SettingsError, match="missing.toml does not exist"):
        read_config(tmp_path / "missing.toml")
    with pytest.raises(SettingsError, match="is a directory"):
        read_config(tmp_path)


def test_wrong_type_in_toml_is_reported_not_coerced_silently(tmp_path):
    config = _write(tmp_path / "c.toml", '[train]\nbatch_size = 12.5\n[sampler]\nmala = "maybe"\n')
    with pytest.raises(SettingsError, match=r"train\.batch_size"):
        load_settings(("train",), config=config)
    with pytest.raises(SettingsError, match=r"sampler\.mala"):
        load_settings(("sampler",), config=config)



@pytest.mark.parametrize("text, named", [("[trian]\nepochs = 3\n", "'trian'"), ("epochs = 3\n[train]\n", "'epochs'")])
def test_misspelt_section_or_stray_key_is_an_error(tmp_path, text, named):
    from llcv.errors import SettingsError
    from llcv.settings import load_settings

    config = tmp_path / "experiment.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=named):
        load_settings(("train",), config=config)


def test_a_model_name_and_a_factory_together_are_refused_naming_the_field():
    with pytest.raises(SettingsError) as raised:
        validate_section("model", {"name": "resnet18", "factory": "mypackage.nets:build"})
    assert str(raised.value).startswith("model.factory: ") and "both name the architecture" in str(raised.value)
    assert validate_section("model", {"factory": "mypackage.nets:build"}).factory == "mypackage.nets:build"
