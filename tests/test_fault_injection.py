"""Killed at the worst moments, interrupted with Ctrl-C: the rerun finishes as if nothing happened.

The run is a real ``python -m gradience mechanism run`` killed by the fault seam
(``GRADIENCE_FAULT``: ``os._exit`` at a named point, as abrupt as SIGKILL) at each point in
turn, on one run folder, so that every kill lands on what the previous ones left behind.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.reliability import (
    digests,
    gradience,
    leftovers,
    records,
    result_files,
)

from gradience.cli import main
from gradience.faults import FAULT_EXIT_CODE, parse_fault
from gradience.io import read_model
from gradience.results import AuditResult

SEED = Path("seed_42")


def started(run: Path, job: str) -> bool:
    return run.is_dir() and job in records(run)


def probe_killed_after_checkpoint(run: Path) -> None:
    checkpoints = run / SEED / "probe" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (checkpoints / "checkpoint-3" / "trainer_state.json").is_file()
    assert records(run)[f"{SEED}/probe"].status == "running"
    # Damage of the kind a kill inside the Trainer's own checkpoint writer leaves: a newer
    # checkpoint folder without trainer_state.json (the file it writes last). It must not be
    # resumed from; checkpoint-3 must.
    shutil.copytree(checkpoints / "checkpoint-3", checkpoints / "checkpoint-5")
    (checkpoints / "checkpoint-5" / "trainer_state.json").unlink()


def probe_killed_mid_step(run: Path) -> None:
    checkpoints = run / SEED / "probe" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (run / SEED / "probe" / "adapter").exists()


def probe_adapter_half_written(run: Path) -> None:
    probe = run / SEED / "probe"
    assert (probe / "adapter.partial" / "adapter_model.safetensors").is_file()
    assert not (probe / "adapter").exists()
    # The half-written adapter was not audited, and nothing downstream of it started.
    assert not (probe / "audit.json").exists() and not (run / SEED / "ranks").exists()


def probe_killed_mid_evaluation(run: Path) -> None:
    probe = run / SEED / "probe"
    assert (probe / "train_result.json").is_file() and (probe / "adapter").is_dir()
    assert not (probe / "eval.json").exists() and not (probe / "predictions.jsonl").exists()
    record = records(run)[f"{SEED}/probe"]
    assert record.status == "running" and record.phases_done == ["train"]


def predictions_killed_before_rename(run: Path) -> None:
    probe = run / SEED / "probe"
    assert [p.name.startswith(".predictions.jsonl.") for p in probe.glob("*.tmp")] == [True]
    assert not (probe / "predictions.jsonl").exists() and not (probe / "eval.json").exists()


def killed_mid_aggregation(run: Path) -> None:
    assert {job: r.status for job, r in records(run).items()} == dict.fromkeys(
        (f"{SEED}/{job}" for job in ("probe", "ranks", "per_layer")), "done"
    )
    assert (run / SEED / "bench.json").is_file()
    assert not (run / "aggregated_results.json").exists()


#: (GRADIENCE_FAULT, what that kill must have left behind), in the order they are applied.
FAULTS: list[tuple[str, Callable[[Path], None]]] = [
    ("checkpoint", probe_killed_after_checkpoint),
    ("train_step@2", probe_killed_mid_step),  # resumed from checkpoint-3: steps 4, 5 (killed)
    ("rename:adapter", probe_adapter_half_written),
    ("eval_batch", probe_killed_mid_evaluation),
    ("rename:predictions.jsonl", predictions_killed_before_rename),
    ("aggregate", killed_mid_aggregation),
]


@pytest.mark.slow
def test_a_run_killed_at_every_fault_point_finishes_as_if_never_killed(
    reliability_config_file, reference_run, tmp_path
) -> None:
    run = tmp_path / "run"
    args = ("mechanism", "run", "--config", reliability_config_file, "--output", run)
    finished: dict = {}
    for spec, left_behind in FAULTS:
        killed = gradience(*args, env={"GRADIENCE_FAULT": spec})
        point, detail, _ = parse_fault(spec)
        where = point + (f":{detail}" if detail else "")
        assert killed.returncode == FAULT_EXIT_CODE, (spec, killed.stderr[-2000:])
        assert f"fault injected at {where}" in killed.stderr
        now = records(run)
        for job, record in finished.items():
            assert now[job] == record, f"{job}, finished before the kill at {spec}, was redone"
        finished.update({job: r for job, r in now.items() if r.status == "done"})
        left_behind(run)

    final = gradience(*args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert records(run) == finished  # every job had finished; the last run redid none
    assert leftovers(run) == []
    assert result_files(run) == result_files(reference_run)
    audit, reference = (
        read_model(folder / SEED / "probe" / "audit.json", AuditResult)
        for folder in (run, reference_run)
    )
    assert audit.modules == reference.modules  # the audit read the complete adapter


def interruptible() -> None:
    """Give the child Ctrl-C as a terminal would. A test runner started in the background of a
    non-interactive shell (``make test &``, nohup) inherits SIGINT *ignored*, and Python then
    never installs its KeyboardInterrupt handler: the test would measure the runner, not us."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_at_once_keeps_finished_jobs_and_says_how_to_resume(
    reliability_config_file, reference_run, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "gradience", "mechanism", "run"]
        + ["--config", str(reliability_config_file), "--output", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 240
        while not started(run, f"{SEED}/per_layer"):
            assert process.poll() is None and time.monotonic() < deadline, "per_layer never started"
            time.sleep(0.1)
        before = {job: r for job, r in records(run).items() if r.status == "done"}
        kept = digests(run / SEED / "probe")
        assert set(before) == {f"{SEED}/probe", f"{SEED}/ranks"}
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130 and stopped_after < 10, (stopped_after, err[-2000:])
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gradience: interrupted; finished jobs are kept")
    assert {job: r for job, r in records(run).items() if r.status == "done"} == before
    assert digests(run / SEED / "probe") == kept

    resume = shlex.split(last.split("Resume with: ", 1)[1])
    assert resume[:3] == ["gradience", "mechanism", "run"] and "--fresh" not in resume
    assert main(resume[1:]) == 0  # the printed command, as the user would paste it
    assert records(run)[f"{SEED}/probe"] == before[f"{SEED}/probe"]
    assert result_files(run) == result_files(reference_run)


SECOND_CTRL_C = """
import os, signal, time
from gradience.commands.interrupts import second_interrupt_exits

with second_interrupt_exits():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    except KeyboardInterrupt:
        print("first Ctrl-C: cleaning up", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses it again during a slow cleanup
        time.sleep(30)
print("cleanup finished")
"""


def test_a_second_ctrl_c_during_cleanup_exits_at_once() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SECOND_CTRL_C],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=interruptible,
    )
    assert result.returncode == 130 and time.monotonic() - started < 20
    assert result.stdout == "first Ctrl-C: cleaning up\n"
    assert result.stderr.strip() == "gradience: interrupted again: exiting now"
