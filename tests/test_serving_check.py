"""``gradience check`` on real PEFT adapters of the embedded model: each server's scaling rule
against PEFT's own ``module.scaling``, the uniform fix run for real, and every bad input."""

from __future__ import annotations

import copy
import json
import math
import shlex

import pytest
import torch
from helpers_audit import MISTRAL_TARGETS, edit_config, lora_modules, make_adapter
from peft import PeftModel

from gradience.cli import main
from gradience.models import quiet_peft_deprecations

torch.set_num_threads(1)

#: r = 8, α = 16 (s = 2) at the top level; q_proj at rank 4 (s = 4), layer 1's down_proj at
#: rank 2 (s = 8), v_proj with α = 4 (s = 0.5): five modules a one-α/r server mis-scales.
PATTERNS = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": MISTRAL_TARGETS,
    "rank_pattern": {"q_proj": 4, r"model\.layers\.1\.mlp\.down_proj": 2},
    "alpha_pattern": {"v_proj": 4},
}


@pytest.fixture(scope="module")
def base():
    from gradience.models.embedded import pretrained_model

    model, _ = pretrained_model(progress=False)
    return model


def build(base, folder, **lora):
    with quiet_peft_deprecations():
        make_adapter(copy.deepcopy(base), folder, **lora)
    return folder


def peft_scalings(base, folder) -> dict[str, float]:
    """PEFT's own scaling of every module, from the adapter as PeftModel loads it."""
    with quiet_peft_deprecations():
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    return {name: layer.scaling["default"] for name, layer in lora_modules(model).items()}


def deltas(base, folder) -> dict[str, torch.Tensor]:
    """PEFT's own ΔW (scaling included) of every module."""
    with quiet_peft_deprecations():
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    return {
        name: layer.get_delta_weight("default").detach()
        for name, layer in lora_modules(model).items()
    }


@pytest.fixture(scope="module")
def hetero(base, tmp_path_factory):
    return build(base, tmp_path_factory.mktemp("check") / "hetero", **PATTERNS)


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_json(folder, capsys, *servers):
    flags = [f for s in servers for f in ("--server", s)]
    code, out, err = run(["check", folder, "--json", *flags], capsys)
    assert code in (0, 1), err
    return code, json.loads(out)


def test_vllm_mis_scales_every_pattern_module_by_what_peft_implies(base, hetero, capsys):
    code, result = check_json(hetero, capsys, "vllm")
    assert code == 1 and not result["served_exactly"] and result["config_matches"]
    peft = peft_scalings(base, hetero)
    vllm = result["servers"][0]
    assert vllm["server"] == "vllm" and vllm["max_lora_rank"] == 8
    served = {m["name"]: m for m in vllm["modules"]}
    assert set(served) == set(peft)
    mis = set()
    for name, s_peft in peft.items():
        expected = abs(16 / 8 / s_peft - 1)  # vLLM: the top-level α/r for every module
        assert served[name]["scale_error"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert served[name]["served_scaling"] == pytest.approx(2.0)
        if expected > 0:
            mis.add(name)
            assert served[name]["status"] == "mis-scaled" and served[name]["scale_error"] > 0
        else:
            assert served[name]["status"] == "exact"
    assert mis == {
        *(f"model.layers.{i}.self_attn.{p}" for i in range(4) for p in ("q_proj", "v_proj")),
        "model.layers.1.mlp.down_proj",
    }
    assert vllm["max_scale_error"] == pytest.approx(3.0)  # v_proj: 2 / 0.5 - 1
    assert {m["name"]: m["peft_scaling"] for m in result["modules"]} == pytest.approx(peft)


def test_table_names_each_mis_served_module_and_the_one_fix(hetero, capsys):
    code, out, _ = run(["check", hetero, "--server", "vllm"], capsys)
    assert code == 1
    assert "MIS-SERVED" in out and "config vs tensors: match" in out
    row = next(line for line in out.splitlines() if line.startswith("model.layers.1.mlp.down_proj"))
    assert row.split()[-1] == "0.75"  # vLLM's 2 against PEFT's 16/2 = 8
    fix = next(line for line in out.splitlines() if line.startswith("fix: "))
    assert fix == (
        f"fix: gradience compress {hetero} --uniform --policy energy@1.0 --output {hetero}-uniform"
    )


def test_the_uniform_fix_is_served_exactly_by_every_server(base, hetero, capsys):
    _, result = check_json(hetero, capsys)
    assert result["fix_not_enough_for"] == []
    assert run(shlex.split(result["fix"])[1:], capsys)[0] == 0  # the printed command, for real
    fixed = f"{hetero}-uniform"
    code, out, err = run(["check", fixed], capsys)
    assert code == 0, out + err
    code, after = check_json(fixed, capsys)
    assert after["served_exactly"] and all(s["served_exactly"] for s in after["servers"])
    assert {s["server"] for s in after["servers"]} == {"peft", "vllm", "sglang", "lorax"}
    assert all(s == pytest.approx(1.0) for s in peft_scalings(base, fixed).values())
    # padding: every module now holds rank 8; the source held less
    assert after["max_rank"] == 8 and after["padded_params"] == after["stored_params"]
    assert after["params_before_compression"] == result["stored_params"] < after["stored_params"]
    before, share = result["stored_params"], after["stored_params"] / result["stored_params"]
    assert f"compressed from {hetero} ({before:,} parameters): stored {share:.1%} of it" in out
    # and the fix keeps every module's update: PEFT's ΔW before and after agree
    original, uniform = deltas(base, hetero), deltas(base, fixed)
    for name, delta in original.items():
        torch.testing.assert_close(uniform[name], delta, rtol=1e-4, atol=1e-6)


def test_plain_compress_uniform_output_passes_every_server(hetero, tmp_path, capsys):
    out = tmp_path / "uni"
    assert run(["compress", hetero, "--uniform", "--output", out], capsys)[0] == 0
    code, result = check_json(out, capsys)
    assert code == 0 and result["servers"] and result["max_rank"] == 8


def test_held_parameters_are_the_padded_rank_times_the_widths(hetero, capsys):
    _, result = check_json(hetero, capsys, "vllm", "peft", "lorax")
    widths = sum(m["d_in"] + m["d_out"] for m in result["modules"])
    stored = sum(m["stored_rank"] * (m["d_in"] + m["d_out"]) for m in result["modules"])
    servers = {s["server"]: s for s in result["servers"]}
    assert result["stored_params"] == servers["peft"]["held_params"] == stored
    assert result["padded_params"] == servers["vllm"]["held_params"] == 8 * widths
    assert servers["lorax"]["held_params"] == 8 * widths  # ranks 2, 4 and 8 all pad to 8


def test_rslora_scaling_follows_peft(base, tmp_path, capsys):
    folder = build(
        base,
        tmp_path / "rs",
        r=8,
        lora_alpha=4,
        use_rslora=True,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"q_proj": 2},
    )
    code, result = check_json(folder, capsys, "vllm", "peft")
    peft = peft_scalings(base, folder)
    assert {m["name"]: m["peft_scaling"] for m in result["modules"]} == pytest.approx(peft)
    vllm = {m["name"]: m for m in result["servers"][0]["modules"]}
    for name, s_peft in peft.items():
        assert vllm[name]["scale_error"] == pytest.approx(abs(4 / math.sqrt(8) / s_peft - 1))
    assert code == 1 and vllm["model.layers.0.self_attn.q_proj"]["scale_error"] == pytest.approx(
        0.5
    )


def test_vllm_from_0_32_follows_the_patterns_and_earlier_releases_do_not(hetero, capsys):
    for version, expected in (("0.31.0", 1), ("0.32.0", 0), ("0.33", 0)):
        code, out, _ = run(["check", hetero, "--server", "vllm", "--vllm-version", version], capsys)
        assert code == expected, (version, out)
    code, _, err = run(["check", hetero, "--vllm-version", "latest"], capsys)
    assert_one_line_error(code, err, "--vllm-version")


def test_sglang_refuses_mixed_ranks_and_applies_alpha_over_r_to_rslora(
    base, hetero, tmp_path, capsys
):
    code, result = check_json(hetero, capsys, "sglang")
    sglang = result["servers"][0]
    assert code == 1 and {m["status"] for m in sglang["modules"]} == {"refused"}
    assert "stored ranks [2, 4] differ from r = 8" in sglang["problems"][0]

    folder = build(
        base, tmp_path / "rs", r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj"]
    )
    code, result = check_json(folder, capsys, "sglang")
    peft = peft_scalings(base, folder)
    assert code == 1 and all(s == pytest.approx(4 / math.sqrt(8)) for s in peft.values())
    for m in result["servers"][0]["modules"]:  # SGLang: α/r, never α/√r
        assert m["served_scaling"] == pytest.approx(0.5)
        assert m["scale_error"] == pytest.approx(abs(0.5 / peft[m["name"]] - 1))


def test_padding_takes_back_part_of_what_compression_saved(hetero, tmp_path, capsys):
    small = tmp_path / "small"
    assert run(["compress", hetero, "--policy", "energy@0.6", "--output", small], capsys)[0] == 0
    code, result = check_json(small, capsys)
    widths = sum(m["d_in"] + m["d_out"] for m in result["modules"])
    servers = {s["server"]: s for s in result["servers"]}
    before = result["params_before_compression"]
    assert code == 1 and before == sum(
        m["stored_rank"] * (m["d_in"] + m["d_out"])
        for m in check_json(hetero, capsys)[1]["modules"]
    )
    assert result["stored_params"] < result["padded_params"] <= servers["vllm"]["held_params"]
    assert servers["vllm"]["held_params"] == servers["vllm"]["max_lora_rank"] * widths
    code, out, _ = run(["check", small], capsys)
    assert f"compressed from {hetero} ({before:,} parameters)" in out


def test_lorax_scales_later_layer_types_with_the_padded_rank(base, tmp_path, capsys):
    # r = 4, α = 8: LoRAX pads rank 4 to 8 and sets config.r = 8 after q_proj, so v_proj
    # gets 8/8 = 1 instead of PEFT's 2 (and a uniform export at rank 4 cannot fix that).
    folder = build(base, tmp_path / "r4", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    code, result = check_json(folder, capsys, "lorax", "vllm")
    lorax, vllm = result["servers"]
    assert code == 1 and vllm["served_exactly"] and not lorax["served_exactly"]
    for m in lorax["modules"]:
        assert m["served_rank"] == 8
        if m["name"].endswith("q_proj"):
            assert m["status"] == "exact"
        else:
            assert m["status"] == "mis-scaled" and m["scale_error"] == pytest.approx(0.5)
    assert result["fix_not_enough_for"] == ["lorax"]


def test_lorax_refuses_two_padded_ranks_in_one_layer_type(base, tmp_path, capsys):
    folder = build(
        base,
        tmp_path / "stack",
        r=16,
        lora_alpha=16,
        target_modules=["q_proj"],
        rank_pattern={r"model\.layers\.0\.self_attn\.q_proj": 4},
    )
    code, result = check_json(folder, capsys, "lorax")
    assert code == 1
    assert {m["status"] for m in result["servers"][0]["modules"]} == {"refused"}
    assert "torch.stack" in result["servers"][0]["problems"][0]


def test_lorax_skips_a_layer_type_missing_from_one_layer(base, tmp_path, capsys):
    targets = r"model\.layers\.[0-2]\.self_attn\.q_proj|model\.layers\.\d\.self_attn\.v_proj"
    folder = build(base, tmp_path / "partial", r=8, lora_alpha=16, target_modules=targets)
    code, result = check_json(folder, capsys, "lorax", "peft")
    lorax, peft = result["servers"]
    assert code == 1 and peft["served_exactly"] and result["config_matches"]
    status = {m["name"]: (m["status"], m["scale_error"]) for m in lorax["modules"]}
    assert status["model.layers.0.self_attn.q_proj"] == ("dropped", 1.0)
    assert status["model.layers.3.self_attn.v_proj"] == ("exact", 0.0)


def test_dora_is_refused_by_vllm_and_sglang_and_unconfirmed_for_lorax(base, tmp_path, capsys):
    folder = build(
        base, tmp_path / "dora", r=8, lora_alpha=16, target_modules=["q_proj"], use_dora=True
    )
    code, result = check_json(folder, capsys)
    verdicts = {s["server"]: {m["status"] for m in s["modules"]} for s in result["servers"]}
    assert code == 1 and result["fix"] is None
    assert verdicts == {
        "peft": {"exact"},
        "vllm": {"refused"},
        "sglang": {"refused"},
        "lorax": {"unconfirmed"},
    }


def test_a_config_that_does_not_describe_the_weights_is_reported_per_module(base, tmp_path, capsys):
    folder = build(base, tmp_path / "lies", r=8, lora_alpha=16, target_modules=["q_proj"])
    edit_config(folder, rank_pattern={r"model\.layers\.2\.self_attn\.q_proj": 4})
    code, result = check_json(folder, capsys, "peft")
    assert code == 1 and not result["config_matches"] and result["fix"] is None
    bad = {m["name"]: m for m in result["modules"] if m["issues"]}
    assert list(bad) == ["model.layers.2.self_attn.q_proj"]
    assert (
        "stored rank 8, but r/rank_pattern gives 4"
        in bad["model.layers.2.self_attn.q_proj"]["issues"][0]
    )
    peft = {m["name"]: m["status"] for m in result["servers"][0]["modules"]}
    assert peft["model.layers.2.self_attn.q_proj"] == "refused"
    with pytest.raises(RuntimeError, match="size mismatch"):  # PEFT itself refuses it
        peft_scalings(base, folder)


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradience: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_inputs_exit_2_with_one_line(hetero, tmp_path, capsys):
    code, _, err = run(["check", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "not found", "give the adapter folder")

    weights = hetero / "adapter_model.safetensors"
    code, _, err = run(["check", weights], capsys)
    assert_one_line_error(
        code, err, str(weights), "give the adapter folder (the one with adapter_config.json)"
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["check", empty], capsys)
    assert_one_line_error(code, err, "no adapter_config.json")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes((hetero / "adapter_config.json").read_bytes())
    data = weights.read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run(["check", broken], capsys)
    assert_one_line_error(code, err, "adapter_model.safetensors")


def test_the_cli_knows_the_same_servers_as_the_stage():
    from gradience.commands.check import SERVERS as CLI_SERVERS
    from gradience.serving import SERVERS

    assert CLI_SERVERS == SERVERS
