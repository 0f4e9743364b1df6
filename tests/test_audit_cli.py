"""``gradience audit`` / ``gradience suggest`` end to end on real PEFT adapters, and bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers_audit import (
    MISTRAL_TARGETS,
    edit_config,
    make_adapter,
    rewrite_weights,
    tiny_gpt2,
    tiny_mistral,
)

from gradience.cli import main
from gradience.results import AuditResult, RankPattern

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny Mistral r=8 adapter (rank_pattern on one module, one planted rank-1 module)."""
    out = tmp_path_factory.mktemp("cli") / "adapter"
    make_adapter(
        tiny_mistral(),
        out,
        r=8,
        lora_alpha=16,
        target_modules=MISTRAL_TARGETS,
        rank_pattern={r"model\.layers\.1\.mlp\.down_proj": 4},
        planted={"model.layers.0.self_attn.v_proj": 1},
    )
    return out


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_of(adapter, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(adapter, target)
    return target


def test_audit_prints_a_readable_table(adapter, capsys):
    code, out, err = run(["audit", adapter, "--top", "3"], capsys)
    assert code == 0, err
    assert "Per module type" in out and "Suggested ranks" in out
    for kind in MISTRAL_TARGETS:
        assert kind in out
    assert "Top 3 modules using the least of their rank:" in out
    least = out.split("using the least of their rank:")[1].splitlines()
    assert least[3].startswith("model.layers.0.self_attn.v_proj")  # the planted rank-1 module


def test_audit_json_output_and_plot(adapter, tmp_path, capsys):
    audit_file, plot_file = tmp_path / "audit.json", tmp_path / "audit.png"
    code, out, err = run(
        [
            "audit",
            adapter,
            "--json",
            "--output",
            audit_file,
            "--policies",
            "energy@0.9,knee",
            "--plot",
            plot_file,
        ],
        capsys,
    )
    assert code == 0, err
    printed = AuditResult.model_validate_json(out)
    written = json.loads(audit_file.read_text())
    assert written["schema_version"] == 3
    assert AuditResult.model_validate(written) == printed
    assert list(printed.summary.policies) == ["energy@0.9", "knee"]
    assert printed.modules[0].name == "model.layers.0.mlp.down_proj"
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_file.stat().st_size > 20_000


def test_suggest_writes_a_rank_pattern_naming_every_module(adapter, tmp_path, capsys):
    audit_file, ranks_file = tmp_path / "audit.json", tmp_path / "ranks.json"
    assert (
        run(["audit", adapter, "--output", audit_file, "--allowed-ranks", "1,2,4,8"], capsys)[0]
        == 0
    )
    code, out, err = run(
        ["suggest", audit_file, "--policy", "energy@0.99", "--output", ranks_file], capsys
    )
    assert code == 0, err
    assert "energy@0.99" in out and "of the probe" in out
    audit = AuditResult.model_validate_json(audit_file.read_text())
    pattern = RankPattern.model_validate_json(ranks_file.read_text())
    assert list(pattern.ranks) == [m.name for m in audit.modules]
    assert pattern.allowed_ranks == [1, 2, 4, 8] and pattern.probe_r == 8
    assert pattern.ranks["model.layers.0.self_attn.v_proj"] == 1
    assert pattern.ranks["model.layers.1.mlp.down_proj"] == 4  # capped at its own rank
    assert pattern.trainable_params == sum(
        pattern.ranks[m.name] * (m.d_in + m.d_out) for m in audit.modules
    )
    code, out, _ = run(
        ["suggest", audit_file, "--policy", "knee", "--margin", "2", "--allowed-ranks", "2,8"],
        capsys,
    )
    assert code == 0
    assert set(RankPattern.model_validate_json(out).ranks.values()) <= {2, 4, 8}


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradience: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_directory(tmp_path, capsys):
    code, _, err = run(["audit", tmp_path / "nope"], capsys)
    assert_one_line_error(code, err, "nope", "adapter directory not found")


def test_missing_weights_file(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    (target / "adapter_model.safetensors").unlink()
    code, _, err = run(["audit", target], capsys)
    assert_one_line_error(code, err, "no adapter_model.safetensors")


def test_missing_config_file(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    (target / "adapter_config.json").unlink()
    assert_one_line_error(*run(["audit", target], capsys)[::2], "adapter_config.json")


def test_config_and_weights_mismatch(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    edit_config(target, rank_pattern={})  # the weights still hold one r=4 module
    code, _, err = run(["audit", target], capsys)
    assert_one_line_error(
        code, err, "adapter_config.json: r:", "model.layers.1.mlp.down_proj", "rank 4"
    )


def test_module_outside_target_modules(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    edit_config(target, target_modules=["q_proj"])
    assert_one_line_error(*run(["audit", target], capsys)[::2], "target_modules")


def test_lora_a_without_lora_b(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    rewrite_weights(target, drop="layers.1.self_attn.o_proj.lora_B")
    code, _, err = run(["audit", target], capsys)
    assert_one_line_error(code, err, "model.layers.1.self_attn.o_proj has lora_A but no lora_B")


def test_nan_weights(adapter, tmp_path, capsys):
    target = copy_of(adapter, tmp_path)
    rewrite_weights(target, poison="layers.0.mlp.up_proj.lora_B")
    code, _, err = run(["audit", target], capsys)
    assert_one_line_error(
        code,
        err,
        "adapter_model.safetensors: base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
        "NaN",
    )


def test_pickle_needs_allow_pickle(tmp_path, capsys):
    make_adapter(
        tiny_gpt2(layers=1),
        tmp_path,
        r=2,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
        safe=False,
    )
    code, _, err = run(["audit", tmp_path], capsys)
    assert_one_line_error(code, err, "adapter_model.bin", "--allow-pickle")
    code, out, err = run(["audit", tmp_path, "--allow-pickle", "--json"], capsys)
    assert code == 0, err
    assert AuditResult.model_validate_json(out).modules[0].name == "transformer.h.0.attn.c_attn"


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_pickle_that_runs_code_is_refused_even_with_allow_pickle(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2})
    )
    torch.save({"x.lora_A.weight": RunsCodeWhenUnpickled()}, tmp_path / "adapter_model.bin")
    code, out, err = run(["audit", tmp_path, "--allow-pickle"], capsys)
    assert_one_line_error(code, err, "weights_only=True")
    assert "ran code" not in out


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--policies", "energy@2"], "--policies"),
        (["--policies", "median"], "unknown rank policy"),
        (["--allowed-ranks", "1,two"], "--allowed-ranks"),
        (["--allowed-ranks", "0,4"], "--allowed-ranks"),
        (["--plot", "out.pdf"], "--plot"),
    ],
)
def test_bad_audit_options(adapter, args, fragment, capsys):
    assert_one_line_error(*run(["audit", adapter, *args], capsys)[::2], fragment)


def test_bad_suggest_inputs(tmp_path, capsys):
    assert_one_line_error(*run(["suggest", tmp_path / "none.json"], capsys)[::2], "file not found")
    (tmp_path / "bad.json").write_text('{"schema_version": 1, "modules": []}')
    assert_one_line_error(
        *run(["suggest", tmp_path / "bad.json"], capsys)[::2], "bad.json", "adapter"
    )
    assert_one_line_error(
        *run(["suggest", tmp_path / "bad.json", "--policy", "top"], capsys)[::2], "--policy"
    )
