"""Property-based tests (hypothesis): no input makes settings or the command line fail badly.

Settings models: any values either validate or raise a pydantic ValidationError (a
SettingsError naming each field, through ``validate_section``); valid settings survive a round
trip through JSON. Config files, shard and grid strings: a result or a SettingsError, nothing
else. The command line: random flag values for several commands, with the library replaced,
end in exit 0 (the library was called once) or 2 (it was not), never a traceback.
Example counts stay small so the suite stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from _helpers import fake_record
from llcv import LLCResult, SamplerSettings, estimate_llc
from llcv.calibration import ROW_FIELDS, SweepResult, parse_grid
from llcv.checkpoints import CheckpointInfo, ModelSpec
from llcv.cli import app
from llcv.errors import SettingsError
from llcv.estimation.run import EstimateSummary
from llcv.results import ResultsStore
from llcv.settings import SECTION_MODELS, EstimateSettings, load_settings, parse_shard, read_config, validate_section
from llcv.training import TrainResult

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_cli")


# Values: plausible ones (so that many examples validate) mixed with hostile ones. No NUL and no
# lone surrogates in text: neither can reach llcv through argv or a TOML file.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
WORDS = (
    ["sgld", "rmsprop_sgld", "eval", "train", "cpu", "auto", "cuda", "cuda:0", "cuda:128", "mps", "0/4", "3/2", "1/²", "png",
     "svg", "step", "epoch", "cosine", "adamw", "sgd", "digits", "synthetic", "smallcnn", "resnet18", "cifar", "imagenet",
     "results/x", "llc.png", "layer3.*", "local", "ray", "fp32", "bf16", "batched", "", " ", "inf", "-inf", "nan", "1e400",
     "true", "None", "cpu,cpu", "all"]
)  # fmt: skip
words = st.sampled_from(WORDS)
numbers = st.one_of(
    st.integers(-3, 300),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-8, max_value=1e3),
    st.floats(min_value=0.0, max_value=1.0),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, words, text)
values = st.one_of(scalars, st.lists(st.one_of(numbers, words), max_size=4), st.dictionaries(text, scalars, max_size=2))


POOL = [0, 1, 2, 7, 64, 300, -1, 0.0, 0.05, 0.5, 0.9, 1e-4, 1.5, 100.0, True, False, None, [1e-4, 1e-3], [0, 3], [], ["layer3.*"],
        [1.0, 10.0], "0/4", "1/4", "cuda:1", "rmsprop_sgld", "pdf", "constant", "folder", "resnet50", "ray", "sequential"]  # fmt: skip


def _accepts(model, field: str, value) -> bool:
    try:
        model.model_validate({field: value})
    except ValidationError:
        return False
    return True


def _good_values(model) -> dict[str, list]:
    """For each field, the values of a small pool (and the words) that it accepts on their own."""
    pool = [*POOL, *WORDS]
    return {field: [value for value in pool if _accepts(model, field, value)] for field in model.model_fields}


@st.composite
def section_values(draw, section: str) -> dict:
    """Mostly real fields with values each accepts (so many examples validate), some hostile ones."""
    model = SECTION_MODELS[section]
    good = _GOOD.setdefault(section, _good_values(model))
    raw = {}
    for field in draw(st.lists(st.sampled_from(list(good)), max_size=5, unique=True)):
        hostile = not good[field] or draw(st.integers(0, 4)) == 0
        raw[field] = draw(values if hostile else st.sampled_from(good[field]))
    if draw(st.integers(0, 5)) == 0:
        raw[draw(text)] = draw(values)  # an unknown key
    return raw


_GOOD: dict[str, dict[str, list]] = {}


@pytest.mark.parametrize("section", list(SECTION_MODELS))
def test_any_values_validate_or_name_each_bad_field(section):
    model = SECTION_MODELS[section]

    @FEW
    @given(section_values(section))
    def check(raw):
        try:
            valid = model.model_validate(raw)
        except ValidationError:
            with pytest.raises(SettingsError) as raised:
                validate_section(section, raw)
            lines = str(raised.value).splitlines()
            assert lines and all(line.startswith(f"{section}.") for line in lines), lines
            return
        dumped = valid.model_dump(mode="json")
        json.dumps(dumped, allow_nan=False)  # JSON-clean: no inf or nan survives validation
        assert model.model_validate(dumped) == valid
        assert validate_section(section, raw) == valid

    check()


def _toml_value(value) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 2**63 else None  # TOML integers are 64-bit
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        items = [_toml_value(item) for item in value]
        return None if None in items else f"[{', '.join(items)}]"
    return None


@st.composite
def config_files(draw) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTION_MODELS, "samplr"]), max_size=3, unique=True)):
        lines.append(f"[{section}]")
        names = list(SECTION_MODELS.get(section, SECTION_MODELS["sampler"]).model_fields)
        for key, value in draw(st.dictionaries(st.sampled_from(names), values, max_size=4)).items():
            written = _toml_value(value)
            if written is not None:
                lines.append(f"{key} = {written}")
    garbage = draw(st.sampled_from(["", "", "", "[train\n", "epochs = 3\n", "x = \n", "\xff"]))
    return garbage + "\n".join(lines) + "\n"


@FEW
@given(config_files())
def test_any_config_file_resolves_or_is_a_settings_error(tmp_path, content):
    path = tmp_path / "experiment.toml"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    try:
        bundle = load_settings(tuple(SECTION_MODELS), config=path)
    except SettingsError as error:
        assert str(error).strip()
        return
    assert bundle.to_json_dict().keys() <= set(SECTION_MODELS)


@FEW
@given(st.binary(max_size=64))
def test_any_bytes_as_a_config_file_are_read_or_refused(tmp_path, content):
    path = tmp_path / "experiment.toml"
    path.write_bytes(content)
    try:
        raw = read_config(path)
    except SettingsError:
        return
    assert all(isinstance(body, dict) for body in raw.values())


shards = st.one_of(text, st.builds(lambda k, n, sep: f"{k}{sep}{n}", st.integers(-2, 12), st.integers(-2, 12), st.sampled_from(["/", " / ", ":"])), words)


@FEW
@given(shards)
def test_shards_parse_or_are_refused_and_agree_with_the_setting(shard):
    try:
        index, count = parse_shard(shard)
    except SettingsError:
        parsed = None
    else:
        assert 0 <= index < count
        parsed = (index, count)
    try:
        EstimateSettings(shard=shard)
    except ValidationError:
        return
    assert parsed is not None and f"{parsed[0]}/{parsed[1]}" == "/".join(str(int(part)) for part in shard.split("/"))


grids = st.one_of(
    text,
    st.lists(st.one_of(numbers.map(str), words), min_size=1, max_size=4).map(",".join),
    st.tuples(numbers, numbers, st.integers(-2, 3000)).map(lambda parts: ":".join(map(str, parts))),
)


@FEW
@given(grids, st.booleans())
def test_grids_parse_to_finite_values_or_are_refused(grid, allow_zero):
    try:
        values = parse_grid(grid, "--epsilons", allow_zero=allow_zero)
    except SettingsError as error:
        assert "--epsilons" in str(error)
        return
    assert 1 <= len(values) <= 1000
    assert all(math.isfinite(value) and (value > 0 or (allow_zero and value == 0)) for value in values)


# --- the command line ---------------------------------------------------------------------------

flag_values = st.one_of(numbers.map(str), words, text)


@pytest.fixture(scope="module")
def template() -> LLCResult:
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    return estimate_llc(nn.Linear(2, 1), data, SamplerSettings(num_chains=2, num_draws=4), loss="mse", device="cpu")


def _sweep_result() -> SweepResult:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(epsilon=1e-4, gamma=100.0, nbeta=10.0, mala_acceptance=0.95, llc_mean=5.0, llc_std=0.1, llc_final=5.0, diverged=False,
               negative_fraction=0.0, trace_drift=0.01, r_hat=1.0, ess=40.0, qualifies=True, reason="")  # fmt: skip
    return SweepResult(
        rows=[row], traces=[[5.0]], recommended=SamplerSettings(epsilon=1e-4, gamma=100.0, nbeta=10.0), reason="the only row",
        base=SamplerSettings(), rule={"target_acceptance": 0.9, "max_negative_fraction": 0.0, "max_drift_z": 3.0, "max_r_hat": 1.1},
    )  # fmt: skip


SAMPLER_FLAGS = ["--epsilon", "--gamma", "--nbeta", "--num-chains", "--num-draws", "--num-burnin-steps", "--num-steps-bw-draws",
                 "--sampler", "--batch-size", "--num-samples", "--bn-mode", "--divergence-bound", "--seed", "--params",
                 "--classes", "--device"]  # fmt: skip
COMMAND_FLAGS = {
    "estimate": (SAMPLER_FLAGS, ["--mala", "--no-mala", "--json"]),
    "estimate-all": (
        [*SAMPLER_FLAGS, "--every-nth", "--steps", "--shard", "--executor", "--devices", "--cpus-per-task", "--claim-timeout-seconds"],
        ["--force", "--per-layer", "--per-class", "--no-mala"],
    ),
    "train": (
        ["--epochs", "--batch-size", "--lr", "--optimizer", "--momentum", "--weight-decay", "--schedule", "--step-every-epochs",
         "--step-factor", "--seed", "--device", "--checkpoint-every-epochs", "--log-checkpoints", "--image-size", "--num-workers",
         "--data-seed", "--dataset", "--model", "--stem", "--checkpoints-dir"],
        ["--download", "--no-download"],
    ),  # fmt: skip
    "calibrate-sweep": (
        ["--epsilons", "--gammas", "--nbetas", "--num-chains", "--num-draws", "--num-burnin-steps", "--target-acceptance", "--sampler",
         "--batch-size", "--num-samples", "--bn-mode", "--seed", "--classes", "--format", "--device", "--results-dir"],
        [],
    ),  # fmt: skip
    "plot": (["--x", "--settings", "--out", "--label"], ["--log-x", "--linear-x", "--mark-transitions", "--per-parameter"]),
}


def _install(command: str, tmp: Path, template: LLCResult, monkeypatch) -> tuple[list[str], list]:
    """Replace the command's library calls; returns the fixed arguments and the list of library calls."""
    calls: list = []

    def record(result):
        def fake(*args, **kwargs):
            calls.append((args, kwargs))
            return result

        return fake

    checkpoint = tmp / "step_00000001.pt"
    info = CheckpointInfo(path=str(checkpoint), format="state_dict", model=ModelSpec(name="Linear", num_classes=3, in_channels=None))
    target = SimpleNamespace(model=nn.Linear(2, 3), dataset=TensorDataset(torch.randn(8, 2), torch.randint(3, (8,))), checkpoint=info)
    if command in ("estimate", "calibrate-sweep"):
        monkeypatch.setattr("llcv.targets.Target.load", lambda self: target)
    if command == "estimate":
        monkeypatch.setattr("llcv.sampling.estimate_llc", record(template))
        return ["estimate", "--checkpoint", str(checkpoint)], calls
    if command == "estimate-all":
        summary = EstimateSummary(settings_hash="abc", folder=tmp / "abc", selected=["a"], computed=["a"])
        monkeypatch.setattr("llcv.estimation.estimate_all", record(summary))
        return ["estimate-all", "--checkpoints-dir", str(tmp)], calls
    if command == "train":
        monkeypatch.setattr("llcv.training.train", record(TrainResult(tmp / "checkpoints", [], 8, 8, {"val_loss": 0.5, "val_acc": 0.9})))
        return ["train"], calls
    if command == "calibrate-sweep":
        monkeypatch.setattr("llcv.calibration.calibrate_sweep", record(_sweep_result()))
        monkeypatch.setattr("llcv.calibration.save_sweep", lambda *args, **kwargs: [])
        return ["calibrate", "sweep", "--checkpoint", str(checkpoint)], calls
    if command == "plot":
        store = ResultsStore(tmp / "results", "abcdef012345")
        store.write_settings(SamplerSettings())
        store.write_record(fake_record(checkpoint, 1, 2.0, settings_hash="abcdef012345"))
        monkeypatch.setattr("llcv.figures.plotting.llc_figure", lambda *args, **kwargs: None)  # the flags are under test, not the drawing
        monkeypatch.setattr("llcv.figures.runs.save_figure", record(tmp / "llc.png"))
        return ["plot", "--results-dir", str(tmp / "results")], calls
    raise AssertionError(command)


@st.composite
def command_lines(draw, command: str) -> list[str]:
    with_value, switches = COMMAND_FLAGS[command]
    chosen = draw(st.lists(st.sampled_from(with_value), max_size=4))
    args = []
    for flag in chosen:
        args += [flag, draw(flag_values)]
    return args + draw(st.lists(st.sampled_from(switches), max_size=2, unique=True)) if switches else args


@pytest.mark.parametrize("command", list(COMMAND_FLAGS))
def test_random_flag_values_exit_0_or_2_and_never_a_traceback(command, tmp_path, template, monkeypatch):
    fixed, calls = _install(command, tmp_path, template, monkeypatch)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(command_lines(command))
    def check(args):
        calls.clear()
        result = runner.invoke(app, [*fixed, *args])
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert result.exit_code in (0, 2), (args, result.output)
        if result.exit_code == 0:
            assert len(calls) == 1, args
        else:
            assert not calls, f"bad usage reached the library: {args}"
            assert "error" in result.output.lower(), result.output

    check()
