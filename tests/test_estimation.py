"""Tests for llcv.estimation: selection, shards, claims, resume, failures and executors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from _helpers import copy_checkpoints, fast_settings
from llcv.estimation.claims import Claims, WorkerIdentity
from llcv.errors import SettingsError
from llcv.estimation.run import estimate_all
from llcv.progress import Reporter
from llcv.results import ResultsStore, load_results, settings_hash
from llcv.estimation.selection import select_checkpoints, shard_of
from llcv.settings import EstimateSettings, validate_section
from llcv.targets import Target


@pytest.fixture
def checkpoints(trained_run, tmp_path) -> Path:
    """Copies of three checkpoints of the shared synthetic run."""
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 5, 16])


def _mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("step_*.json")}


# --- selection and shards


def _names(count: int) -> list[Path]:
    return [Path(f"step_{step:08d}.pt") for step in range(count)]


def test_every_nth_keeps_the_first_every_kth_and_the_last():
    paths = _names(10)
    assert [path.name for path in select_checkpoints(paths, every_nth=4)] == [
        "step_00000000.pt", "step_00000004.pt", "step_00000008.pt", "step_00000009.pt",
    ]  # fmt: skip
    assert select_checkpoints(paths, every_nth=3)[-1].name == "step_00000009.pt"
    assert select_checkpoints(paths) == paths


def test_steps_choose_checkpoints_and_unknown_steps_are_named():
    paths = _names(10)
    assert [path.name for path in select_checkpoints(paths, steps=[7, 2])] == ["step_00000002.pt", "step_00000007.pt"]
    with pytest.raises(SettingsError, match="step\\(s\\) 11"):
        select_checkpoints(paths, steps=[2, 11])
    with pytest.raises(SettingsError, match="only one"):
        select_checkpoints(paths, steps=[2], every_nth=2)


def test_shards_partition_the_checkpoints_and_do_not_reshuffle():
    paths = _names(40)
    shares = [select_checkpoints(paths, shard=f"{index}/3") for index in range(3)]
    assert sorted(path for share in shares for path in share) == sorted(paths)
    assert sum(len(share) for share in shares) == len(paths)
    assert all(share for share in shares)
    # a new checkpoint leaves every existing one in its share
    grown = _names(41)
    assert all(shard_of(path.name, 3) == index for index, share in enumerate(shares) for path in share)
    assert sum(len(select_checkpoints(grown, shard=f"{index}/3")) for index in range(3)) == 41
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(SettingsError):
            select_checkpoints(paths, shard=bad)


# --- estimate, resume, force, settings


def test_estimates_every_checkpoint_then_a_rerun_recomputes_nothing(checkpoints, tmp_path):
    results = tmp_path / "results"
    settings = fast_settings()
    summary = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert summary.ok and summary.computed == ["step_00000000.pt", "step_00000005.pt", "step_00000016.pt"]
    folder = results / settings_hash(settings)
    assert summary.folder == folder and (folder / "settings.json").is_file()
    records = load_results(results)
    assert [(record.status, record.step, record.scope) for record in records] == [
        ("done", 0, "model"), ("done", 5, "model"), ("done", 16, "model"),
    ]  # fmt: skip
    assert all(record.result.llc_mean is not None and record.fingerprint for record in records)
    assert records[2].metrics.val_acc is not None and records[1].epoch == pytest.approx(5 / 8)
    assert len((folder / "summary.csv").read_text().splitlines()) == 4
    assert not list((folder / ".claims").glob("*.claim"))

    before = _mtimes(folder)
    again = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert again.computed == [] and again.already_done == summary.computed
    assert _mtimes(folder) == before


def test_same_seed_gives_the_same_numbers(checkpoints, tmp_path):
    settings = fast_settings()
    estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "a", device="cpu", steps=[5]))
    estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "b", device="cpu", steps=[5]))
    first, second = load_results(tmp_path / "a")[0], load_results(tmp_path / "b")[0]
    assert first.result.llc_trace == second.result.llc_trace


def test_force_redoes_and_changed_checkpoints_are_redone(checkpoints, tmp_path):
    results, settings = tmp_path / "results", fast_settings()
    estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    folder = results / settings_hash(settings)
    before = _mtimes(folder)
    forced = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu", force=True, steps=[0]))
    assert forced.computed == ["step_00000000.pt"]
    after = _mtimes(folder)
    assert after["step_00000000.json"] != before["step_00000000.json"]
    assert after["step_00000005.json"] == before["step_00000005.json"]
    # a checkpoint rewritten since its record (another training run, say) is estimated again
    os.utime(checkpoints / "step_00000016.pt")
    redo = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert redo.computed == ["step_00000016.pt"]


def test_changed_settings_go_to_a_new_hash_folder(checkpoints, tmp_path):
    results = tmp_path / "results"
    first = estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=results, device="cpu", steps=[0]))
    before = _mtimes(first.folder)
    second = estimate_all(checkpoints, fast_settings(epsilon=3e-4), EstimateSettings(results_dir=results, device="cpu", steps=[0]))
    assert second.folder != first.folder and second.computed == ["step_00000000.pt"]
    assert _mtimes(first.folder) == before
    assert {path.name for path in results.iterdir()} == {first.settings_hash, second.settings_hash}
    assert load_results(results)[0].sampler_settings["epsilon"] == 3e-4  # the most recent


def test_a_corrupt_checkpoint_fails_alone_and_is_retried(checkpoints, tmp_path):
    (checkpoints / "step_00000003.pt").write_bytes(b"this is not a checkpoint")
    results, settings = tmp_path / "results", fast_settings()
    summary = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert not summary.ok
    assert list(summary.failed) == ["step_00000003.pt"]
    assert "not a readable PyTorch checkpoint" in summary.failed["step_00000003.pt"]
    assert summary.computed == ["step_00000000.pt", "step_00000005.pt", "step_00000016.pt"]
    failed = ResultsStore(results, summary.settings_hash).read_record("step_00000003.pt")
    assert failed.status == "failed" and failed.step == 3 and failed.result is None
    # a rerun retries only the failure
    retry = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert list(retry.failed) == ["step_00000003.pt"] and retry.computed == []


def test_every_chain_diverging_is_a_failure_with_its_reason(checkpoints, tmp_path):
    options = EstimateSettings(results_dir=tmp_path / "r", device="cpu", steps=[16])
    summary = estimate_all(checkpoints, fast_settings(epsilon=10.0, gamma=0.0), options)
    assert "every chain diverged" in summary.failed["step_00000016.pt"]
    record = load_results(tmp_path / "r")[0]
    assert record.status == "failed" and record.result.diagnostics.diverged_chains == 2


def test_foreign_checkpoints_with_a_model_factory_and_a_dataset(tmp_path):
    from torch import nn

    def my_model() -> nn.Module:  # a researcher's own architecture, not in the registry
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))

    torch.manual_seed(0)
    folder = tmp_path / "foreign"
    folder.mkdir()
    for epoch in (1, 2):
        torch.save(my_model().state_dict(), folder / f"checkpoint_epoch_{epoch}.pth")
    data = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(3, (64,)))
    options = EstimateSettings(results_dir=tmp_path / "results", device="cpu")
    summary = estimate_all(folder, fast_settings(num_samples=None), options, target=Target(model_factory=my_model, dataset=data))
    assert summary.ok and summary.computed == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    records = load_results(tmp_path / "results")
    assert [(record.step, record.epoch) for record in records] == [(None, 1.0), (None, 2.0)]
    assert records[0].result.num_parameters == 2 * 9 + 2 + 8 * 3 + 3


def test_bad_arguments_fail_before_any_work(checkpoints, tmp_path):
    # a malformed option is refused when the settings are made (EstimateSettings(...) itself raises pydantic's ValidationError)
    for bad in ({"executor": "dask"}, {"shard": "3/2"}, {"devices": ["auto"]}):
        with pytest.raises(SettingsError, match=f"estimate.{next(iter(bad))}"):
            validate_section("estimate", {"results_dir": tmp_path / "r", **bad})
    with pytest.raises(SettingsError, match="executor"):  # and by estimate_all, should one get through unvalidated
        estimate_all(checkpoints, fast_settings(), EstimateSettings.model_construct(results_dir=tmp_path / "r", executor="dask"))
    missing = "cuda:7" if torch.cuda.is_available() else "cuda"
    with pytest.raises(SettingsError):
        estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "r", device=missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SettingsError, match="no checkpoint files"):
        estimate_all(empty, fast_settings(), EstimateSettings(results_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


# --- claims


def _fake_claim(folder: Path, key: str, *, heartbeat: float, host: str = "elsewhere.example", pid: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.claim"
    path.write_text(json.dumps({"key": key, "host": host, "pid": pid, "worker": "other", "claimed": heartbeat, "heartbeat": heartbeat}))
    return path


def test_a_live_claim_is_left_alone_and_a_stale_one_taken_over(checkpoints, tmp_path):
    results, settings = tmp_path / "results", fast_settings()
    claims = results / settings_hash(settings) / ".claims"
    live = _fake_claim(claims, "step_00000005", heartbeat=time.time())
    _fake_claim(claims, "step_00000016", heartbeat=time.time() - 10_000)  # an old heartbeat
    _fake_claim(claims, "step_00000000", heartbeat=time.time(), host=socket.gethostname(), pid=_dead_pid())
    summary = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu", claim_timeout_seconds=600))
    assert summary.computed == ["step_00000000.pt", "step_00000016.pt"]
    assert summary.elsewhere == ["step_00000005.pt"]
    assert live.exists() and json.loads(live.read_text())["worker"] == "other"
    assert sorted(path.name for path in claims.glob("*.claim")) == ["step_00000005.claim"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_claims_are_exclusive_refreshed_and_released_only_by_their_owner(tmp_path):
    folder = tmp_path / "claims"
    with Claims(folder, timeout_seconds=60) as first, Claims(folder, timeout_seconds=60) as second:
        assert first.try_claim("a")
        assert not second.try_claim("a")
        beat = first.read("a")["heartbeat"]
        time.sleep(0.01)
        assert first.refresh("a") and first.read("a")["heartbeat"] > beat
        second.release("a")
        assert first.read("a")["worker"] == first.identity.worker
        first.release("a")
        assert first.read("a") is None
        assert second.try_claim("a") and first.try_claim("b")
    assert not list(folder.glob("*.claim"))  # leaving releases everything


def test_closing_removes_this_workers_interrupted_temporaries_and_leaves_others(tmp_path):
    folder = tmp_path / "claims"
    with Claims(folder, timeout_seconds=60) as mine, Claims(folder, timeout_seconds=60) as theirs:
        assert mine.try_claim("a")
        # what an interrupt between writing a claim's temporary and renaming it leaves behind
        mine_left = mine._temporary("b", mine._payload("b"))
        theirs_left = theirs._temporary("c", theirs._payload("c"))
        mine.close()
        assert not mine_left.exists() and theirs_left.exists()
    assert not theirs_left.exists()


def test_a_worker_whose_claim_was_taken_over_stops_refreshing_it(tmp_path):
    folder = tmp_path / "claims"
    slow = Claims(folder, timeout_seconds=0.2)
    assert slow.try_claim("a")
    time.sleep(0.3)
    quick = Claims(folder, timeout_seconds=0.2, identity=WorkerIdentity(host="other-host"))
    assert quick.try_claim("a")
    assert not slow.refresh("a") and "a" not in slow.held
    slow.release("a")
    assert quick.read("a")["worker"] == quick.identity.worker


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    folder = tmp_path / "claims"
    with Claims(folder, timeout_seconds=0.5) as holder:
        assert holder.try_claim("a")
        time.sleep(0.8)
        rival = Claims(folder, timeout_seconds=0.5, identity=WorkerIdentity(host="other-host"))
        assert not rival.try_claim("a")


class _InterruptAfter(Reporter):
    def __init__(self, count: int):
        self.count = count

    def advance(self, key, amount=1, **fields):
        if key == "checkpoints":
            self.count -= 1
            if self.count == 0:
                raise KeyboardInterrupt


def test_an_interrupt_releases_claims_and_reports_what_is_left(checkpoints, tmp_path):
    results, settings = tmp_path / "results", fast_settings()
    with pytest.raises(KeyboardInterrupt) as raised:
        estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"), reporter=_InterruptAfter(1))
    summary = raised.value.estimate_summary
    assert summary.interrupted and summary.computed == ["step_00000000.pt"]
    assert summary.left == ["step_00000005.pt", "step_00000016.pt"]
    assert not list((results / settings_hash(settings) / ".claims").glob("*.claim"))
    rest = estimate_all(checkpoints, settings, EstimateSettings(results_dir=results, device="cpu"))
    assert rest.computed == summary.left and rest.already_done == ["step_00000000.pt"]


def _worker(checkpoints: Path, results: Path, queue) -> None:
    summary = estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=results, device="cpu"))
    queue.put({"computed": summary.computed, "done": summary.already_done, "elsewhere": summary.elsewhere})


def test_two_concurrent_workers_split_the_work_without_duplicates(trained_run, tmp_path):
    import multiprocessing

    _, result = trained_run
    checkpoints = copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 1, 2, 3, 5, 16])
    # forked workers: separate processes (their own pids and claims) without a second torch import
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(checkpoints, tmp_path / "results", queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outputs = [queue.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    computed = [set(output["computed"]) for output in outputs]
    everything = {path.name for path in checkpoints.glob("*.pt")}
    assert not computed[0] & computed[1]
    assert computed[0] | computed[1] | set(outputs[0]["done"]) | set(outputs[1]["done"]) == everything
    records = load_results(tmp_path / "results")
    assert len(records) == len(everything) and all(record.status == "done" for record in records)
    assert {record.worker.pid for record in records} <= {worker.pid for worker in workers}


# --- Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_ray_executor_matches_the_local_one(local_ray, checkpoints, tmp_path):
    settings = fast_settings(precision="fp32")  # "auto" would be timed apart in this process and in Ray's
    local = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "local", device="cpu", steps=[0, 16]))
    options = EstimateSettings(results_dir=tmp_path / "ray", device="cpu", steps=[0, 16], executor="ray", cpus_per_task=1)
    remote = estimate_all(checkpoints, settings, options)
    assert remote.ok and sorted(remote.computed) == sorted(local.computed)
    for mine, theirs in zip(load_results(tmp_path / "local"), load_results(tmp_path / "ray")):
        assert theirs.worker.executor == "ray" and theirs.worker.pid != os.getpid()
        assert theirs.result.num_threads == 1
        assert theirs.result.llc_mean == pytest.approx(mine.result.llc_mean, rel=1e-4, abs=1e-6)
        assert theirs.fingerprint == mine.fingerprint
    # resume works the same: nothing left to do, and a corrupt file fails alone
    (checkpoints / "step_00000001.pt").write_bytes(b"garbage")
    again = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "ray", device="cpu", executor="ray", cpus_per_task=1))
    assert set(again.already_done) == {"step_00000000.pt", "step_00000016.pt"}
    assert set(again.computed) == {"step_00000005.pt"} and list(again.failed) == ["step_00000001.pt"]


def test_ray_tasks_sample_in_the_precision_the_first_checkpoint_chose(local_ray, checkpoints, tmp_path):
    options = EstimateSettings(results_dir=tmp_path / "ray", device="cpu", steps=[0, 5, 16], executor="ray", cpus_per_task=1)
    estimate_all(checkpoints, fast_settings(precision="auto"), options)
    records = sorted(load_results(tmp_path / "ray"), key=lambda record: record.finished)
    first, *later = [record.result.precision_choice for record in records]
    assert len(later) == 2 and not first.reused
    assert all(choice.reused and choice.seconds_per_pass == first.seconds_per_pass for choice in later)
