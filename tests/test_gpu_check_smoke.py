"""benchmarks/gpu_check.sh on a CPU (GPU_CHECK_SMOKE=1): every step's status lands in OUT.json,
a step stopped at its time limit is marked ``timeout`` and the others still run and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["mfu", "mfu_flash", "generation", "mechanism", "vllm_parity", "experiment_cost"]
CUDA_ONLY = {"mfu_flash", "vllm_parity"}
#: Keys each step writes on a CPU exactly as on a GPU (GPU-only figures as null).
NUMBER_KEYS = {
    "mfu": {"mfu", "step_s", "flop_formula", "model_tflop_per_step", "peak_memory_gib",
            "estimate_gib", "estimate_ratio", "real_tokens_per_step", "padding_free"},
    "generation": {"auto_batch_size", "measurements", "auto_tokens_per_s", "single_tokens_per_s",
                   "free_memory_gib", "skipped_batches"},
    "mechanism": {"complete", "jobs", "peak_allocated_gib", "estimate_largest_job_gib",
                  "leak_after_free_mib"},
    "experiment_cost": {"per_job", "totals", "eval_batch", "sources", "not_measured", "judged"},
}  # fmt: skip


def run_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "OUT.json"
    environment = {**os.environ, "GPU_CHECK_SMOKE": "1", "GPU_CHECK_PYTHON": sys.executable, **env}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.is_file(), done.stdout + done.stderr
    return done, json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_run_reports_every_step_ok_or_skipped_with_a_reason(tmp_path):
    done, report = run_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["smoke"] is True and report["passed"] is True
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        if name in CUDA_ONLY:
            assert step["status"] == "skipped", (name, step)
            assert step["reason"], name
        else:
            assert step["status"] == "ok", (name, step)
            assert NUMBER_KEYS[name] <= set(step["numbers"]), (name, step["numbers"])
    assert report["steps"]["mechanism"]["numbers"]["complete"] is True
    # a CPU run measures no GPU: the projection says it used its assumptions, and why
    cost = report["steps"]["experiment_cost"]["numbers"]
    assert cost["judged"] is False
    assert any("mfu.json is from CPU" in why for why in cost["not_measured"])
    assert cost["totals"]["total_s"] > cost["totals"]["training_s"] > 0


@pytest.mark.slow
def test_a_step_past_its_limit_is_marked_timeout_and_the_rest_still_report(tmp_path):
    done, report = run_check(
        tmp_path,
        GPU_CHECK_STEPS="generation,experiment_cost",
        GPU_CHECK_LIMIT_GENERATION="1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    steps = report["steps"]
    assert list(steps) == STEPS
    assert steps["generation"]["status"] == "timeout"
    assert "limit of 1 s" in steps["generation"]["reason"]
    assert steps["experiment_cost"]["status"] == "ok", steps["experiment_cost"]
    missing = steps["experiment_cost"]["numbers"]["not_measured"]
    assert any(why.startswith("generation.json") for why in missing), missing
    for name in ("mfu", "mfu_flash", "mechanism", "vllm_parity"):
        assert steps[name]["status"] == "skipped"
        assert "GPU_CHECK_STEPS" in steps[name]["reason"]


def write_step(folder: Path, name: str, status: dict, numbers: dict | None) -> None:
    (folder / f"{name}.status").write_text(json.dumps(status))
    (folder / f"{name}.log").write_text(f"{name} log\nlast line of {name}\n")
    if numbers is not None:
        (folder / f"{name}.json").write_text(json.dumps(numbers))


def test_report_maps_exit_codes_and_step_files_to_statuses(tmp_path):
    ran = {"selected": True, "wall_s": 3, "limit_s": 10}
    write_step(tmp_path, "fine", {**ran, "exit_code": 0}, {"status": "ok", "reason": None, "x": 1})
    write_step(tmp_path, "cut", {**ran, "exit_code": 124}, {"status": "running", "x": 2})
    write_step(tmp_path, "killed", {**ran, "exit_code": 137}, None)
    write_step(
        tmp_path, "missed", {**ran, "exit_code": 1}, {"status": "failed", "reason": "MFU 20%"}
    )
    write_step(tmp_path, "crashed", {**ran, "exit_code": 1}, None)
    write_step(
        tmp_path, "absent", {**ran, "exit_code": 0}, {"status": "skipped", "reason": "no vLLM"}
    )
    write_step(tmp_path, "unfinished", {**ran, "exit_code": 0}, {"status": "running"})
    out = tmp_path / "OUT.json"
    names = ["fine", "cut", "killed", "missed", "crashed", "absent", "unfinished", "never"]
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check_report.py"),
            str(tmp_path),
            str(out),
            *names,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    steps = json.loads(out.read_text())["steps"]
    assert {n: s["status"] for n, s in steps.items()} == {
        "fine": "ok",
        "cut": "timeout",
        "killed": "timeout",
        "missed": "failed",
        "crashed": "failed",
        "absent": "skipped",
        "unfinished": "failed",
        "never": "failed",
    }
    assert steps["cut"]["numbers"] == {"x": 2}  # what a step had written before its limit
    assert steps["killed"]["reason"] == "ran past its limit of 10 s; it wrote no numbers"
    assert steps["missed"]["reason"] == "MFU 20%"
    assert steps["crashed"]["reason"].endswith("last line of crashed")
    assert steps["absent"]["reason"] == "no vLLM"
