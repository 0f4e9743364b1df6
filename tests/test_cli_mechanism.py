"""The command line: help, and user errors as one line with exit code 2 (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gradience.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from gradience.cli import main\n"
        "for argv in (['--help'], ['mechanism', '--help'], ['mechanism', 'run', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, argv\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    out = result.stdout
    for command in ("audit", "train", "mechanism"):
        assert command in out
    for sub in ("run", "status"):
        assert sub in out
    for option in ("--config", "--output", "--seeds", "--executor", "--ray-address"):
        assert option in out
    assert out.strip().endswith("TORCH_NOT_IMPORTED")


def test_installed_entry_point_runs() -> None:
    gradience = Path(sys.executable).with_name("gradience")
    if not gradience.exists():
        pytest.skip("no console script next to this interpreter")
    result = subprocess.run([str(gradience), "mechanism", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "status" in result.stdout


def test_unknown_config_key_exits_2_naming_file_and_key_path(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  max_step: 100\n")
    assert main(["mechanism", "run", "--config", str(config), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "train.max_step" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_wrong_value_type_exits_2_naming_the_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("compression:\n  variants: [probe, per_layer, per_layer_shufled]\n")
    assert main(["mechanism", "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "compression.variants" in err and "per_layer_shufled" in err


def test_missing_config_and_bad_seeds_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["mechanism", "run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    config = REPO / "experiments" / "configs" / "tiny_test.yaml"
    assert main(["mechanism", "run", "--config", str(config), "--seeds", "42,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["mechanism", "run", "--config", str(config), "--seeds", "42,42"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_status_of_a_folder_that_is_not_a_run_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["mechanism", "status", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err
