"""``gradience suggest --budget`` end to end: a real PEFT adapter's audit in, ranks at a budget
out, in a form PEFT itself builds at exactly those ranks."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_audit import MISTRAL_TARGETS, lora_modules, make_adapter, tiny_mistral
from peft import LoraConfig, get_peft_model

from gradience.cli import main
from gradience.results import AuditResult, RankPattern

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory):
    """The audit JSON of a tiny Mistral r=8 adapter (one module planted at rank 1)."""
    folder = tmp_path_factory.mktemp("suggest_budget")
    make_adapter(
        tiny_mistral(),
        folder / "adapter",
        r=8,
        lora_alpha=16,
        target_modules=MISTRAL_TARGETS,
        planted={"model.layers.0.self_attn.v_proj": 1},
    )
    path = folder / "audit.json"
    assert main(["audit", str(folder / "adapter"), "--output", str(path)]) == 0
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def costs(audit: AuditResult) -> dict[str, int]:
    return {m.name: m.d_in + m.d_out for m in audit.modules}


def built_ranks(fragment: dict) -> dict[str, int]:
    """The ranks PEFT gives each module of a fresh tiny Mistral from the printed fragment."""
    config = LoraConfig(
        r=fragment["r"],
        lora_alpha=16,
        target_modules=fragment["target_modules"],
        rank_pattern=fragment["rank_pattern"],
    )
    model = get_peft_model(tiny_mistral(), config)
    return {
        name: module.lora_A["default"].weight.shape[0]
        for name, module in lora_modules(model).items()
    }


@pytest.mark.parametrize("allocator", ["energy@0.9", "global_energy", "depth", "knee"])
def test_budget_fraction_gives_ranks_peft_builds_exactly(audit_file, allocator, capsys):
    audit = AuditResult.model_validate_json(audit_file.read_text())
    code, out, err = run(
        ["suggest", audit_file, "--budget", "0.25x", "--allocator", allocator], capsys
    )
    assert code == 0, err
    pattern = RankPattern.model_validate_json(out)
    data = json.loads(out)
    budget = round(0.25 * audit.summary.total_params)
    assert data["budget"] == budget and data["budget_spec"] == "0.25x"
    assert data["allocator"] == allocator
    assert list(pattern.ranks) == [m.name for m in audit.modules]
    assert all(1 <= r <= 8 for r in pattern.ranks.values())
    assert pattern.trainable_params == sum(pattern.ranks[n] * c for n, c in costs(audit).items())
    assert abs(pattern.trainable_params - budget) <= min(costs(audit).values())
    assert data["param_ratio"] == pytest.approx(pattern.trainable_params / budget)
    assert f"ratio to the budget (0.25x): {data['param_ratio']:.5f}" in err
    assert built_ranks(data["peft"]) == pattern.ranks
    axolotl = data["axolotl"]
    assert axolotl["lora_rank_pattern"] == data["peft"]["rank_pattern"]
    assert axolotl["lora_target_modules"] == data["peft"]["target_modules"]
    assert axolotl["lora_r"] == data["peft"]["r"] == max(pattern.ranks.values())


def test_default_allocator_is_the_policy_and_a_count_budget(audit_file, tmp_path, capsys):
    out_file = tmp_path / "ranks.json"
    code, out, err = run(
        ["suggest", audit_file, "--budget", "3_000", "--policy", "erank", "--output", out_file],
        capsys,
    )
    assert code == 0, err
    assert "erank at a budget of 3,000 parameters" in out and "ratio to the budget" in out
    written = json.loads(out_file.read_text())
    assert written["allocator"] == "erank" and written["budget"] == 3000
    assert abs(written["trainable_params"] - 3000) <= 48


def test_per_layer_budget_is_the_policy_suggestions_parameters(audit_file, capsys):
    code, out, _ = run(["suggest", audit_file, "--allowed-ranks", "1,2,4,8"], capsys)
    per_layer = RankPattern.model_validate_json(out)
    code, out, err = run(
        [
            "suggest",
            audit_file,
            "--allowed-ranks",
            "1,2,4,8",
            "--budget",
            "per_layer",
            "--allocator",
            "global_energy",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["budget"] == per_layer.trainable_params


def test_allow_zero_leaves_modules_out_of_the_peft_config(audit_file, capsys):
    audit = AuditResult.model_validate_json(audit_file.read_text())
    smallest = sum(costs(audit).values())  # every module at rank 1
    code, out, err = run(
        [
            "suggest",
            audit_file,
            "--budget",
            str(smallest // 2),
            "--allocator",
            "global_energy",
            "--allow-zero",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    removed = [name for name, rank in data["ranks"].items() if rank == 0]
    assert removed and data["removed"] == removed
    assert set(data["peft"]["target_modules"]) == set(data["ranks"]) - set(removed)
    built = built_ranks(data["peft"])
    assert built == {n: r for n, r in data["ranks"].items() if r > 0}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--budget", "lots"], ["--budget", "expected a positive number"]),
        (["--budget", "0"], ["--budget"]),
        (["--budget", "2x"], ["--budget", "(0, 1]"]),
        (["--budget", "10"], ["--budget", "below the least"]),
        (["--budget", "99999999"], ["--budget", "above the most"]),
        (["--budget", "0.5x", "--allocator", "median"], ["--allocator", "unknown allocator"]),
        (["--allocator", "depth"], ["--allocator", "only applies with --budget"]),
        (["--allow-zero"], ["--allow-zero", "only applies with --budget"]),
        (["--budget", "0.5x", "--margin", "2"], ["--margin", "per_layer"]),
        (["--budget", "0.5x", "--allowed-ranks", "1,8"], ["--allowed-ranks", "per_layer"]),
    ],
)
def test_bad_budget_inputs_are_one_line_errors(audit_file, args, fragments, capsys):
    code, _, err = run(["suggest", audit_file, *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradience: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
