"""Tests for `estimate-all --devices`: one worker process per device, on CPU as `--devices cpu,cpu`.

Each run here starts two spawned workers (a fresh interpreter importing torch each, a few
seconds), so the tests share that cost: one run checks coverage, numbers, provenance and
progress together; its rerun checks resume.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import FAST_FLAGS, copy_checkpoints, fast_settings, llcv_command, subprocess_env, unwrapped
from llcv.cli import app
from llcv.errors import EstimationError, SettingsError
from llcv.estimation.run import estimate_all
from llcv.estimation.executors import _stops_held_back, resolve_devices
from llcv.progress import ForwardingReporter, Reporter, replay
from llcv.results import load_results, settings_hash
from llcv.settings import EstimateSettings
from llcv.targets import Target

runner = CliRunner()
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@pytest.fixture
def checkpoints(trained_run, tmp_path) -> Path:
    """Copies of three checkpoints of the shared synthetic run."""
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 5, 16])


class _Recorder(Reporter):
    def __init__(self):
        self.calls: list[tuple] = []

    def start(self, key, description, total):
        self.calls.append(("start", key, description, total))

    def advance(self, key, amount=1, **fields):
        self.calls.append(("advance", key, amount, fields))

    def finish(self, key):
        self.calls.append(("finish", key))

    def note(self, message):
        self.calls.append(("note", message))


# --- two CPU workers ------------------------------------------------------------------------------


def test_two_cpu_workers_estimate_every_checkpoint_once_as_the_local_executor_does(checkpoints, tmp_path):
    # fp32 pinned: precision="auto" times bf16 against fp32 in each process, and two workers timing
    # on a busy machine may choose differently from this process
    settings = fast_settings(precision="fp32")
    local = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "local", device="cpu"))
    shown = _Recorder()
    shared = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "devices", devices=["cpu", "cpu"]), reporter=shown)

    assert shared.ok and sorted(shared.computed) == sorted(local.computed) == sorted(path.name for path in checkpoints.glob("*.pt"))
    records = load_results(tmp_path / "devices")
    assert len(records) == 3 and all(record.status == "done" for record in records)
    workers = {record.worker.pid for record in records}
    assert len(workers) == 2 and os.getpid() not in workers  # both workers estimated, neither in this process
    for mine, theirs in zip(load_results(tmp_path / "local"), records):
        assert theirs.worker.executor == "devices" and theirs.result.device == "cpu"
        # this process and each worker run one torch thread (tests/conftest.py; 1 // 2 rounds up to 1),
        # so the same seeds give the same numbers, bit for bit
        assert theirs.result.num_threads == mine.result.num_threads == 1
        assert theirs.result.llc_per_chain == mine.result.llc_per_chain
        assert theirs.result.llc_mean == mine.result.llc_mean

    # one display: the overall bar here, and every worker's chain loops labelled with its device
    assert ("note", "2 workers (cpu#1, cpu#2), 1 torch thread(s) each") in shown.calls
    assert [call[:3] for call in shown.calls if call[:2] == ("advance", "checkpoints")] == [("advance", "checkpoints", 1)] * 3
    starts = [call for call in shown.calls if call[0] == "start" and call[1] != "checkpoints"]
    assert {call[1].split("/")[0] for call in starts} == {"cpu#1", "cpu#2"}
    assert all(call[2].startswith(call[1].split("/")[0] + " · Chain") for call in starts)
    running: dict[str, int] = {}  # steps shown per loop since its start
    shown_per_loop = []
    for kind, key, *rest in shown.calls:
        if key == "checkpoints" or kind == "note":
            continue
        if kind == "start":
            running[key] = 0
        elif kind == "advance":
            running[key] += rest[0]
            assert all(isinstance(value, float) for value in rest[1].values())  # the loss, read in the worker
        else:
            shown_per_loop.append(running.pop(key))
    assert not running and shown_per_loop == [starts[0][3]] * len(starts)  # every loop finished, every step shown

    before = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "devices").glob("*/step_*.json")}
    shown = _Recorder()
    again = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "devices", devices=["cpu", "cpu"]), reporter=shown)
    assert again.computed == [] and sorted(again.already_done) == sorted(shared.computed)
    assert not [call for call in shown.calls if call[0] == "note"]  # nothing to do: no worker started
    assert before == {path.name: path.stat().st_mtime_ns for path in (tmp_path / "devices").glob("*/step_*.json")}


def _cross_entropy_crashing_once(flag: Path, model, batch):
    """The default loss, except that the first process to call it dies at once (as a segfault would)."""
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        inputs, targets = batch
        return torch.nn.functional.cross_entropy(model(inputs), targets)
    os._exit(3)


def test_a_worker_that_dies_fails_its_checkpoint_with_the_reason_and_the_others_carry_on(checkpoints, tmp_path):
    loss = functools.partial(_cross_entropy_crashing_once, tmp_path / "crashed")
    shown = _Recorder()
    options = EstimateSettings(results_dir=tmp_path / "r", devices=["cpu", "cpu"])
    summary = estimate_all(checkpoints, fast_settings(), options, loss=loss, reporter=shown)
    assert len(summary.computed) == 2 and len(summary.failed) == 1
    (reason,) = summary.failed.values()
    assert reason.startswith("the worker on cpu#") and reason.endswith("died: exit code 3")
    assert any(call[0] == "note" and "stopped before finishing a checkpoint (exit code 3); continuing without it" in call[1] for call in shown.calls)
    assert not list((summary.folder / ".claims").glob("*.claim"))
    # a rerun retries the failed checkpoint only
    again = estimate_all(checkpoints, fast_settings(), options, loss=loss)
    assert again.computed == list(summary.failed) and again.ok


def _crash(model, batch):
    os._exit(3)


def test_when_every_worker_dies_before_finishing_a_checkpoint_the_run_stops_with_the_reasons(checkpoints, tmp_path):
    with pytest.raises(EstimationError, match=r"no device worker could start \(cpu#1: exit code 3; cpu#2: exit code 3\)"):
        estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "r", devices=["cpu", "cpu"]), loss=_crash)
    records = load_results(tmp_path / "r")
    assert [record.status for record in records] == ["failed", "failed"]  # the third was never claimed
    assert not list(next((tmp_path / "r").iterdir()).joinpath(".claims").glob("*.claim"))


def test_a_single_device_runs_in_this_process(checkpoints, tmp_path):
    summary = estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "r", steps=[0], devices=["cpu"]))
    (record,) = load_results(tmp_path / "r")
    assert summary.ok and record.worker.to_dict() == {**record.worker.to_dict(), "pid": os.getpid(), "executor": "local"}


def test_an_unpicklable_model_factory_is_a_settings_error(checkpoints, tmp_path):
    from llcv.models import build_model

    with pytest.raises(SettingsError, match="picklable"):
        estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "r", devices=["cpu", "cpu"]), target=Target(dataset="synthetic", model_factory=lambda: build_model("smallcnn", num_classes=4, in_channels=3)))  # fmt: skip


# --- the command line -----------------------------------------------------------------------------


def test_the_command_line_runs_two_workers_and_a_rerun_resumes(checkpoints, tmp_path, isolated_cli):
    command = ["estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(tmp_path / "r"), *FAST_FLAGS]
    result = runner.invoke(app, [*command, "--devices", "cpu, cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 of 3 checkpoint(s) done (3 now, 0 before)" in unwrapped(result.output)
    again = runner.invoke(app, [*command, "--devices", "cpu,cpu"], catch_exceptions=False)
    assert again.exit_code == 0 and "3 of 3 checkpoint(s) done (0 now, 3 before)" in unwrapped(again.output)


@pytest.mark.parametrize(
    ("devices", "extra", "message"),
    [
        pytest.param("cuda:0,cuda:1", [], "--devices cuda:0,cuda:1: cuda:0, cuda:1 not available on this machine", marks=NO_CUDA),
        pytest.param("all", [], "--devices all: this machine has no CUDA GPU; leave --devices out to run here, or give --devices cpu,cpu", marks=NO_CUDA),
        ("cpu,cpu", ["--executor", "ray"], "give --devices or --executor ray, not both"),
        ("auto,cpu", [], "estimate.devices: 'auto': each device must be cpu, cuda, cuda:N or mps"),
        ("all,cuda:0", [], "estimate.devices: all stands alone"),
        ("cpu,,cpu", [], "estimate.devices: '': each device"),
    ],
)  # fmt: skip
def test_bad_devices_exit_2_with_one_message(checkpoints, tmp_path, isolated_cli, devices, extra, message):
    result = runner.invoke(
        app, ["estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(tmp_path / "r"), "--devices", devices, *extra]
    )
    assert result.exit_code == 2, result.output
    assert message in unwrapped(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # refused before any work


def test_devices_past_the_last_gpu_are_refused():
    with pytest.raises(SettingsError, match="does not exist|not available"):
        resolve_devices([f"cuda:{torch.cuda.device_count()}", "cuda:0"])


def test_a_forwarding_reporter_batches_advances_and_replays_with_labels():
    sent: list[tuple] = []
    forwarding = ForwardingReporter(sent.append, "cuda:1", interval=3600)
    forwarding.start("chains-0", "Chain 1/4", 10)
    for _ in range(10):
        forwarding.advance("chains-0", 1, loss=torch.tensor(0.5))
    forwarding.finish("chains-0")
    forwarding.note("hello")
    assert sent == [("start", "cuda:1/chains-0", "cuda:1 · Chain 1/4", 10), ("advance", "cuda:1/chains-0", 10, {"loss": 0.5}),
                    ("finish", "cuda:1/chains-0"), ("note", "cuda:1: hello")]  # fmt: skip
    shown = _Recorder()
    for event in sent:
        replay(event, shown)
    assert shown.calls == sent


# --- stopping -------------------------------------------------------------------------------------


def _workers(pid: int) -> set[int]:
    """The worker processes ``pid`` has spawned (not multiprocessing's resource tracker, also its child)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and b"--multiprocessing-fork" in command:
            found.add(int(stat.parent.name))
    return found


def _gone(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.add(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def _ctrl_c_as_from_a_terminal():
    """Ctrl-C raises KeyboardInterrupt here and in the processes started meanwhile, as in a terminal.
    A pytest started as a background job without job control (``make test &`` in a script)
    inherits SIGINT ignored, and its children inherit that through exec: a Ctrl-C would rightly
    do nothing to them."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _report_ctrl_c_handling(connection) -> None:
    """A spawned worker's report: whether SIGINT and SIGTERM are blocked in it, and its pid."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    connection.send((signal.SIGINT in blocked, signal.SIGTERM in blocked, os.getpid()))


def test_a_ctrl_c_while_a_worker_starts_is_held_back_from_it_and_raised_here_afterwards():
    """A Ctrl-C during a worker's start-up (seconds on a loaded machine) must stop the run, not be lost."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=_report_ctrl_c_handling, args=(theirs,))
    reached_the_end_of_the_block = False
    with _ctrl_c_as_from_a_terminal():
        with pytest.raises(KeyboardInterrupt):
            with _stops_held_back():
                os.kill(os.getpid(), signal.SIGINT)  # as a terminal sends it, mid-start
                process.start()
                reached_the_end_of_the_block = True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert reached_the_end_of_the_block  # the worker was started and known before the Ctrl-C was raised
    blocked_in_the_worker, _, pid = mine.recv()
    process.join(timeout=60)
    assert blocked_in_the_worker and pid == process.pid  # a Ctrl-C to the group waits there until it ignores SIGINT
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process takes Ctrl-C again


def test_a_sigterm_while_a_worker_starts_is_held_back_and_raised_once_the_worker_is_known():
    """Slurm's SIGTERM to the main process mid-start: raised after the start, so the worker is known
    and killed on the way out, instead of left reading its start-up data from a closed pipe."""
    from llcv import console

    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=_report_ctrl_c_handling, args=(theirs,))
    reached_the_end_of_the_block = False
    previous = signal.signal(signal.SIGTERM, console._raise_terminated)
    try:
        with pytest.raises(console.Terminated):
            with _stops_held_back():
                os.kill(os.getpid(), signal.SIGTERM)
                process.start()
                reached_the_end_of_the_block = True
        assert signal.getsignal(signal.SIGTERM) is console._raise_terminated
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached_the_end_of_the_block
    _, sigterm_blocked_in_the_worker, pid = mine.recv()
    process.join(timeout=60)
    assert sigterm_blocked_in_the_worker and pid == process.pid
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")
@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("ctrl-c", id="ctrl-c"),  # SIGINT to the whole process group, as a terminal sends it
        pytest.param("sigterm", id="sigterm"),  # to the main process only, as Slurm's --signal=B:TERM script does
        pytest.param("kill-9", id="kill-9", marks=pytest.mark.slow),
    ],
)
def test_stopping_the_main_process_ends_its_workers(checkpoints, tmp_path, stop):
    results = tmp_path / "results"
    # a second or more per checkpoint, so the stop lands mid-run; after kill -9, long enough that a
    # worker left to finish its checkpoint would outlive the wait below
    draws = 1000 if stop == "kill-9" else 200
    folder = results / settings_hash(fast_settings(num_draws=draws))
    command = llcv_command("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(results), *FAST_FLAGS,
                           "--num-draws", str(draws), "--devices", "cpu,cpu")  # fmt: skip
    # output to files, not pipes: waiting on a pipe would also wait for any worker still holding it
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr, _ctrl_c_as_from_a_terminal():
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=subprocess_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(folder.glob("step_*.json")):  # the workers are up and at work
        assert process.poll() is None, (tmp_path / "stderr").read_text()
        assert time.monotonic() < deadline, "no record appeared"
        time.sleep(0.05)
    while len(workers := _workers(process.pid)) < 2:  # with precision "auto" the first checkpoint runs alone
        assert time.monotonic() < deadline, "the second worker did not start"
        time.sleep(0.05)
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
    process.wait(timeout=60)
    assert _gone(workers, timeout=3), "a worker outlived its main process"
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert "Traceback" not in stderr  # the workers leave Ctrl-C to the main process
    if stop != "kill-9":
        assert process.returncode == {"ctrl-c": 130, "sigterm": 143}[stop], stderr
        assert "estimate-all stopped" in unwrapped(stdout) and "rerun the same command to continue" in unwrapped(stderr)
        assert not list((folder / ".claims").glob("*.claim"))
    for path in folder.glob("step_*.json"):
        assert json.loads(path.read_text())["status"] == "done"  # the stop failed no checkpoint


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the kernel's parent-death signal is Linux's")
def test_a_worker_is_killed_by_the_kernel_the_moment_its_main_process_dies(tmp_path):
    """kill -9 of the main process: the worker dies with it even while too busy to notice by itself."""
    # parent -> child; the child arms the signal as a device worker does, then sleeps without the
    # worker's watch thread, so only the kernel can end it when the parent is killed
    child = (
        "import os, sys, time; from llcv.estimation.executors import _killed_with_parent; _killed_with_parent(); "
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    )
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]]); time.sleep(600)"
    pid_file = tmp_path / "child"
    main = subprocess.Popen([sys.executable, "-c", parent, str(pid_file)], env=subprocess_env())
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and main.poll() is None, "the child never started"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    main.kill()
    main.wait(timeout=10)
    assert _gone({child_pid}, timeout=3), "the child outlived its parent"
