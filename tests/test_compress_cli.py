"""``gradience compress`` end to end, and every bad input as one line with exit code 2."""

from __future__ import annotations

import pytest
import torch
from helpers_audit import MISTRAL_TARGETS, make_adapter, tiny_mistral

from gradience.cli import main
from gradience.io import read_model, write_model
from gradience.results import CompressResult, RankPattern

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress_cli") / "adapter"
    make_adapter(
        tiny_mistral(),
        out,
        r=8,
        lora_alpha=16,
        target_modules=MISTRAL_TARGETS,
        planted={"model.layers.0.self_attn.v_proj": 1},
    )
    return out


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradience: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_compress_prints_a_table_and_writes_compress_json(adapter, tmp_path, capsys):
    out = tmp_path / "small"
    code, stdout, err = run(
        ["compress", adapter, "--output", out, "--policy", "energy@0.7"], capsys
    )
    assert code == 0, err
    result = read_model(out / "compress.json", CompressResult)
    assert result.policy == "energy@0.7" and result.params_after < result.params_before
    assert {p.name for p in out.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "compress.json",
    }
    assert "v_proj" in stdout and f"{result.params_after:,} LoRA parameters" in stdout
    # rerunning into its own earlier output replaces it
    code, _, err = run(["compress", adapter, "--output", out, "--uniform", "--json"], capsys)
    assert code == 0, err
    assert read_model(out / "compress.json", CompressResult).uniform


def test_ranks_from_gradience_suggest_are_applied_exactly(adapter, tmp_path, capsys):
    audit, ranks = tmp_path / "audit.json", tmp_path / "ranks.json"
    assert run(["audit", adapter, "--output", audit], capsys)[0] == 0
    assert run(["suggest", audit, "--policy", "stable_rank", "--output", ranks], capsys)[0] == 0
    code, _, err = run(["compress", adapter, "--ranks", ranks, "--output", tmp_path / "o"], capsys)
    assert code == 0, err
    result = read_model(tmp_path / "o" / "compress.json", CompressResult)
    pattern = read_model(ranks, RankPattern)
    assert {m.name: m.rank for m in result.modules} == pattern.ranks
    assert result.ranks_source == str(ranks) and result.policy is None


def test_dora_is_refused_in_one_line(tmp_path, capsys):
    dora = tmp_path / "dora"
    make_adapter(tiny_mistral(), dora, r=4, target_modules=["q_proj"], use_dora=True)
    code, _, err = run(["compress", dora, "--output", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "use_dora", "DoRA", "adapter_config.json")
    assert not (tmp_path / "out").exists()


def test_a_variant_tensor_without_its_config_flag_is_refused(adapter, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    tensors[key] = torch.ones(32)
    save_file(tensors, copy / "adapter_model.safetensors")
    code, _, err = run(["compress", copy, "--output", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "lora_magnitude_vector", "cannot be truncated exactly")


def test_missing_adapter_directory(tmp_path, capsys):
    code, _, err = run(["compress", tmp_path / "nope", "--output", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, str(tmp_path / "nope"), "adapter directory not found")


def test_a_non_empty_output_folder_is_not_overwritten(adapter, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = run(["compress", adapter, "--output", tmp_path / "busy"], capsys)
    assert_one_line_error(code, err, "not empty")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    code, _, err = run(["compress", adapter, "--output", adapter], capsys)
    assert_one_line_error(code, err, "is the adapter being compressed")


def test_a_rank_file_for_other_modules_or_above_r_is_refused(adapter, tmp_path, capsys):
    from gradience.audit import audit_adapter

    names = [m.name for m in audit_adapter(adapter).modules]

    def attempt(ranks, *extra):
        pattern = RankPattern(
            policy="x", allowed_ranks=[1], probe_r=8, ranks=ranks, trainable_params=0
        )
        write_model(tmp_path / "ranks.json", pattern)
        args = ["compress", adapter, "--ranks", tmp_path / "ranks.json", *extra]
        return run([*args, "--output", tmp_path / "o"], capsys)

    code, _, err = attempt(dict.fromkeys(names[:2], 1))
    assert_one_line_error(code, err, "ranks.json: ranks:", f"{len(names) - 2} missing")
    code, _, err = attempt({**dict.fromkeys(names, 1), names[3]: 9})
    assert_one_line_error(code, err, names[3], "1..8")
    code, _, err = attempt(dict.fromkeys(names, 1), "--margin", "2")
    assert_one_line_error(code, err, "--margin")
    assert not (tmp_path / "o").exists()
