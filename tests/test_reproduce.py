"""experiments/reproduce.py: rerun one committed job and compare it item by item."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def reproduce_module():
    spec = importlib.util.spec_from_file_location(
        "reproduce", REPO / "experiments" / "reproduce.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
