"""Every bad input a user can hand gradience: exit code 2, one line naming the file and the
field or module, no traceback, and nothing already computed touched.

Each row damages one input and points the command at a copy of a finished run (the earlier
results): its configured output, its adapter, its rank files. The row passes only if the
command refuses with one ``gradience: error:`` line containing what the row names, and every
file of the earlier run is byte-for-byte what it was.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fixtures.reliability import digests, gradience, reliability_config
from helpers_audit import edit_config, rewrite_weights

from gradience.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Case:
    """Where a row may write: a scratch folder, and the finished run it must leave alone."""

    tmp: Path
    earlier: Path

    @property
    def adapter(self) -> Path:
        return self.earlier / "seed_42" / "probe" / "adapter"

    @property
    def audit_output(self) -> Path:
        return self.earlier / "seed_42" / "probe" / "audit.json"

    @property
    def train_output(self) -> Path:
        return self.earlier / "seed_42" / "per_layer"

    def config(self, change: Callable[[dict], object] = lambda data: None) -> Path:
        """The run's own config with one change, as a new file."""
        data = reliability_config().model_dump(mode="json")
        change(data)
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run(self, change: Callable[[dict], object]) -> list[str | Path]:
        return ["mechanism", "run", "--config", self.config(change), "--output", self.earlier]

    def damaged_adapter(self, damage: Callable[[Path], object]) -> Path:
        copy = self.tmp / "adapter"
        shutil.copytree(self.adapter, copy)
        damage(copy)
        return copy

    def audit(self, adapter: Path) -> list[str | Path]:
        return ["audit", adapter, "--output", self.audit_output]

    def ranks_file(self, change: Callable[[dict], object]) -> Path:
        data = json.loads((self.earlier / "seed_42" / "ranks" / "per_layer.json").read_text())
        change(data["ranks"])
        path = self.tmp / "ranks.json"
        path.write_text(json.dumps(data))
        return path

    def train(self, ranks: Path) -> list[str | Path]:
        config = self.config()
        return ["train", "--config", config, "--ranks", ranks, "--output", self.train_output]


def set_key(section: str, key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data[section].__setitem__(key, value)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy or a download cut off half-way


def one_module(path: Path) -> str:
    return next(iter(json.loads(path.read_text())["ranks"]))


def malformed_jsonl(case: Case) -> list[str | Path]:
    good = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"}
    train = case.tmp / "train.jsonl"
    train.write_text(json.dumps(good) + "\n")
    evaluation = case.tmp / "eval.jsonl"
    evaluation.write_text(json.dumps(good) + "\n\n" + '{"question": "cut off', encoding="utf-8")

    def gsm8k_files(data: dict) -> None:
        data["task"].update(name="gsm8k", train_file=str(train), eval_file=str(evaluation))

    config = case.config(gsm8k_files)
    return ["eval", "--config", config, "--adapter", case.adapter, "--output", case.adapter.parent]


#: id -> (command for the case, what the one error line must contain)
ROWS: dict[str, tuple[Callable[[Case], list], Callable[[Case], list]]] = {
    "yaml_syntax_error": (
        lambda c: [
            "mechanism",
            "run",
            "--config",
            write(c.tmp / "c.yaml", "train:\n  seeds: [42\n"),
            "--output",
            c.earlier,
        ],
        lambda c: [str(c.tmp / "c.yaml"), "not valid YAML", "line 3"],
    ),
    "unknown_key": (
        lambda c: c.run(set_key("train", "warmup_step", 10)),
        lambda c: [str(c.tmp / "config.yaml"), "train.warmup_step", "Extra inputs"],
    ),
    "wrong_type": (
        lambda c: c.run(set_key("train", "max_steps", "many")),
        lambda c: [str(c.tmp / "config.yaml"), "train.max_steps", "'many'"],
    ),
    "missing_required_section": (
        lambda c: c.run(lambda data: data.pop("task")),
        lambda c: [str(c.tmp / "config.yaml"), "task: section missing"],
    ),
    "probe_r_not_an_allowed_rank": (
        lambda c: c.run(set_key("lora", "probe_r", 6)),
        lambda c: [str(c.tmp / "config.yaml"), "lora.probe_r=6", "compression.allowed_ranks"],
    ),
    "duplicated_seeds": (
        lambda c: c.run(set_key("train", "seeds", [42, 42])),
        lambda c: [str(c.tmp / "config.yaml"), "train.seeds", "[42] listed twice"],
    ),
    "empty_seeds": (
        lambda c: c.run(set_key("train", "seeds", [])),
        lambda c: [str(c.tmp / "config.yaml"), "train.seeds", "at least 1 item"],
    ),
    "duplicated_variants": (
        lambda c: c.run(set_key("compression", "variants", ["probe", "per_layer", "per_layer"])),
        lambda c: [str(c.tmp / "config.yaml"), "compression.variants", "listed twice"],
    ),
    "output_folder_is_a_file": (
        lambda c: ["mechanism", "run", "--config", c.config(), "--output", c.audit_output],
        lambda c: [str(c.audit_output), "is a file", "--output"],
    ),
    "output_folder_cannot_be_created": (
        lambda c: ["mechanism", "run", "--config", c.config(), "--output", c.audit_output / "run"],
        lambda c: [str(c.audit_output / "run"), "cannot create the run folder", "--output"],
    ),
    "adapter_folder_missing": (
        lambda c: c.audit(c.tmp / "no-such-adapter"),
        lambda c: [str(c.tmp / "no-such-adapter"), "adapter directory not found"],
    ),
    "weights_file_missing": (
        lambda c: c.audit(c.damaged_adapter(lambda a: (a / "adapter_model.safetensors").unlink())),
        lambda c: [str(c.tmp / "adapter"), "no adapter_model.safetensors"],
    ),
    "config_rank_contradicts_weights": (
        lambda c: c.audit(c.damaged_adapter(lambda a: edit_config(a, r=4, rank_pattern={}))),
        lambda c: [
            str(c.tmp / "adapter" / "adapter_config.json") + ": r:",
            "rank 8 in the weights but 4",
        ],
    ),
    "config_alpha_not_a_number": (
        lambda c: c.audit(c.damaged_adapter(lambda a: edit_config(a, lora_alpha="sixteen"))),
        lambda c: [
            str(c.tmp / "adapter" / "adapter_config.json") + ": lora_alpha:",
            "expected a number",
        ],
    ),
    "rank_pattern_key_matches_no_module": (
        lambda c: c.audit(
            c.damaged_adapter(
                lambda a: edit_config(a, rank_pattern={"layers\\.9\\.mlp\\.up_proj": 8})
            )
        ),
        lambda c: [
            str(c.tmp / "adapter" / "adapter_config.json") + ": rank_pattern:",
            "matches no LoRA module",
        ],
    ),
    "alpha_pattern_key_matches_no_module": (
        lambda c: c.audit(
            c.damaged_adapter(lambda a: edit_config(a, alpha_pattern={"lm_head": 16.0}))
        ),
        lambda c: [
            str(c.tmp / "adapter" / "adapter_config.json") + ": alpha_pattern:",
            "'lm_head'",
        ],
    ),
    "nan_weights": (
        lambda c: c.audit(
            c.damaged_adapter(lambda a: rewrite_weights(a, poison="layers.1.mlp.up_proj.lora_B"))
        ),
        lambda c: [
            str(c.tmp / "adapter" / "adapter_model.safetensors"),
            "layers.1.mlp.up_proj.lora_B",
            "NaN",
        ],
    ),
    "truncated_safetensors_audited": (
        lambda c: c.audit(c.damaged_adapter(lambda a: truncate(a / "adapter_model.safetensors"))),
        lambda c: [str(c.tmp / "adapter" / "adapter_model.safetensors"), "does not fit"],
    ),
    "truncated_safetensors_evaluated": (
        lambda c: [
            "eval",
            "--config",
            c.config(),
            "--adapter",
            c.damaged_adapter(lambda a: truncate(a / "adapter_model.safetensors")),
            "--output",
            c.earlier / "seed_42" / "probe",
        ],
        lambda c: [str(c.tmp / "adapter" / "adapter_model.safetensors"), "does not fit"],
    ),
    "ranks_file_names_a_module_the_model_lacks": (
        lambda c: c.train(c.ranks_file(lambda r: r.__setitem__("model.layers.9.mlp.up_proj", 4))),
        lambda c: [str(c.tmp / "ranks.json") + ": ranks:", "model.layers.9.mlp.up_proj"],
    ),
    "ranks_file_misses_a_module_the_model_has": (
        lambda c: c.train(c.ranks_file(lambda r: r.pop("model.layers.0.mlp.down_proj"))),
        lambda c: [str(c.tmp / "ranks.json") + ": ranks:", "model.layers.0.mlp.down_proj"],
    ),
    "eval_jsonl_malformed_row": (
        malformed_jsonl,
        lambda c: [str(c.tmp / "eval.jsonl"), "line 3", "not valid JSON"],
    ),
    "run_folder_holds_another_config": (
        lambda c: c.run(set_key("train", "learning_rate", 0.02)),
        lambda c: [
            str(c.earlier / "config.yaml") + ": train.learning_rate:",
            "0.01 there, 0.02 given",
            "--fresh",
        ],
    ),
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def case(reference_run, tmp_path) -> Case:
    earlier = tmp_path / "earlier"
    shutil.copytree(reference_run, earlier)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Case(scratch, earlier)


def refused(argv: list, capsys) -> str:
    """Run the command line in this process; return its one error line (asserting the rest)."""
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("gradience: error: "), err
    return lines[0]


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_exits_2_with_one_line_and_keeps_earlier_results(row, case, capsys) -> None:
    command, expected = ROWS[row]
    argv = command(case)  # may damage a copy in case.tmp, never case.earlier
    before = digests(case.earlier)
    line = refused(argv, capsys)
    for text in expected(case):
        assert text in line, (text, line)
    assert digests(case.earlier) == before


def test_model_unreachable_offline_says_how_to_use_a_local_folder(case, tmp_path) -> None:
    config = case.config(set_key("model", "name", "gradience-test/no-such-model"))
    before = digests(case.earlier)
    result = gradience(
        "train", "--config", config, "--uniform", "2", "--output", case.train_output,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"gradience: error: {config}: model.name: could not load model")
    assert "model.name to its local folder" in lines[0]
    assert digests(case.earlier) == before


def test_output_folder_not_writable(case, tmp_path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: file permissions cannot refuse it")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = refused(["mechanism", "run", "--config", case.config(), "--output", locked], capsys)
    assert str(locked) in line and "not writable" in line
