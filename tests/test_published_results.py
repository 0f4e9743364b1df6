"""experiments/reproduce.py and publish_results.py: committed result folders, rerun and made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.scripts import experiment_script


def reproduce_module():
    return experiment_script("reproduce")


def committed_copy(run_dir: Path, folder: Path) -> Path:
    """What a result folder commits: the config and the aggregated results, nothing else."""
    folder.mkdir()
    for name in ("config.yaml", "aggregated_results.json"):
        shutil.copy(run_dir / name, folder / name)
    return folder


@pytest.mark.usefixtures("one_torch_thread")
def test_a_rerun_reproduces_the_committed_probe_and_a_changed_item_is_caught(
    reference_run, tmp_path, capsys
) -> None:
    module = reproduce_module()
    committed = committed_copy(reference_run, tmp_path / "committed")
    assert module.main([str(committed), "--seed", "42", "--output", str(tmp_path / "a")]) == 0
    assert "reproduced exactly" in capsys.readouterr().out

    # one item scored otherwise, the committed score left as it was, is still caught
    path = committed / "aggregated_results.json"
    data = json.loads(path.read_text())
    items = data["variants"]["probe"]["runs"]["42"]["item_correct"]
    items[0] = 1 - items[0]
    path.write_text(json.dumps(data))
    assert module.main([str(committed), "--seed", "42", "--output", str(tmp_path / "a")]) == 1
    assert "NOT reproduced: 1 item(s) differ" in capsys.readouterr().out


def test_a_missing_seed_variant_or_folder_is_one_clear_error(reference_run, tmp_path, capsys):
    module = reproduce_module()
    committed = committed_copy(reference_run, tmp_path / "committed")
    assert module.main([str(committed), "--seed", "7"]) == 2
    assert "no run of probe at seed 7" in capsys.readouterr().err
    assert module.main([str(committed), "--seed", "42", "--variant", "alloc_depth"]) == 2
    assert "no variant 'alloc_depth'" in capsys.readouterr().err
    assert module.main([str(tmp_path / "nowhere"), "--seed", "42"]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err


def publish_module():
    return experiment_script("publish_results")


def test_publish_copies_no_adapter_and_its_analysis_equals_the_runs(
    reference_run, tmp_path, capsys
) -> None:
    module = publish_module()
    dest = tmp_path / "published"
    assert module.main([str(reference_run), str(dest)]) == 0
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert {
        "config.yaml",
        "aggregated_results.json",
        "mechanism_analysis.json",
        "report.md",
    } <= files
    assert "seed_42/ranks/per_layer.json" in files and "seed_42/probe/audit.json" in files
    assert not any("adapter" in f or f.endswith((".safetensors", ".jsonl")) for f in files)
    # the committed analysis is what `mechanism analyze` gives on the run itself
    from gradience.cli import main as gradience_main

    assert (
        gradience_main(
            ["mechanism", "analyze", str(reference_run), "--output", str(tmp_path / "direct")]
        )
        == 0
    )
    published = json.loads((dest / "mechanism_analysis.json").read_text())
    direct = json.loads((tmp_path / "direct" / "mechanism_analysis.json").read_text())
    published.pop("inputs"), direct.pop("inputs")
    assert published == direct
    # a second publish over the first replaces it; a size limit is enforced
    assert module.main([str(reference_run), str(dest), "--max-mb", "0.001"]) == 1
    assert "limit 0.001 MB" in capsys.readouterr().out


def test_publish_refuses_a_run_without_results_and_a_foreign_folder(tmp_path, capsys) -> None:
    module = publish_module()
    assert module.main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "aggregated_results.json: not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_model.safetensors").write_bytes(b"x")
    assert module.main([str(tmp_path), str(foreign)]) == 2
    assert "holds files a published run never has" in capsys.readouterr().err
