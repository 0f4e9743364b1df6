"""Paths a user gets wrong, on every command: exit 2 and one line saying what to give.

Every file or folder argument of every command is walked through the mistakes a new user makes
with it: a path that does not exist, a file where a folder is expected (the adapter's weights
file for the adapter folder), a folder where a file is expected (``--output FOLDER``,
``--config FOLDER``), a folder without the file it must hold, and an output under a path that is
a file. Each row's other arguments are real and valid, so the row fails on its own mistake only.
``test_every_path_argument_is_walked`` reads the parser, so a new path argument without rows
fails it. Outputs follow one rule (said in each ``--help``): missing parent folders are created.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.mechanism import scenario, write_run_folder
from helpers_audit import make_adapter, tiny_mistral

from gradience.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
ADAPTER = "give the adapter folder (the one with adapter_config.json)"
CONFIG = "give an experiment YAML file"
RANKS = "give a rank pattern JSON file"
RESULTS = "give aggregated_results.json or the run folder holding it"


@dataclass(frozen=True)
class Workspace:
    """Valid inputs (a real adapter, its audit and ranks, a run folder) and the wrong paths."""

    root: Path

    adapter = property(lambda self: self.root / "adapter")
    weights = property(lambda self: self.root / "adapter" / "adapter_model.safetensors")
    audit = property(lambda self: self.root / "audit.json")
    ranks = property(lambda self: self.root / "ranks.json")
    config = property(lambda self: self.root / "config.yaml")
    run = property(lambda self: self.root / "run")
    missing = property(lambda self: self.root / "no-such-path")
    folder = property(lambda self: self.root / "empty-folder")  # exists, holds nothing
    file = property(lambda self: self.root / "notes.txt")  # an ordinary file
    png_folder = property(lambda self: self.root / "plot.png")  # a folder named like a file

    @property
    def under_file(self) -> Path:
        """A path whose parent is a file: nothing can be created there."""
        return self.file / "out"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    w = Workspace(tmp_path_factory.mktemp("paths"))
    make_adapter(tiny_mistral(), w.adapter, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    assert main(["audit", str(w.adapter), "--output", str(w.audit)]) == 0
    assert main(["suggest", str(w.audit), "--output", str(w.ranks)]) == 0
    write_run_folder(w.run, scenario("heterogeneity_only", seed_sd=0.001))
    shutil.copy(REPO / "experiments" / "configs" / "tiny_test.yaml", w.config)
    w.folder.mkdir()
    w.png_folder.mkdir()
    w.file.write_text("not what the command wants\n")
    return w


Argv = Callable[[Workspace], list]
#: (command, argument, mistake): the command line, the path the line must name, what to give.
ROWS: dict[tuple[str, str, str], tuple[Argv, Callable[[Workspace], Path], str]] = {}


def row(command: str, argument: str, mistake: str, argv: Argv, path, expected: str) -> None:
    ROWS[(command, argument, mistake)] = (argv, path, expected)


def _audit_adapter_rows() -> None:
    for cmd, extra in (
        ("audit", lambda w: []),
        ("check", lambda w: []),
        ("compress", lambda w: ["--output", w.root / "compressed"]),
    ):
        for mistake, path in (
            ("missing", lambda w: w.missing),
            ("weights file", lambda w: w.weights),
            ("folder without adapter_config.json", lambda w: w.folder),
        ):
            row(
                cmd,
                "ADAPTER_DIR",
                mistake,
                lambda w, cmd=cmd, path=path, extra=extra: [cmd, path(w), *extra(w)],
                path,
                ADAPTER,
            )


_audit_adapter_rows()
for flag, name in (("--output", "audit.json"), ("--plot", "audit.png")):
    row(
        "audit",
        flag,
        "existing folder",
        lambda w, flag=flag: ["audit", w.adapter, flag, w.png_folder],
        lambda w: w.png_folder,
        f"give a file name for the {'plot' if flag == '--plot' else 'audit JSON'}, e.g.",
    )
    row(
        "audit",
        flag,
        "parent is a file",
        lambda w, flag=flag, name=name: ["audit", w.adapter, flag, w.under_file / name],
        lambda w, name=name: w.under_file / name,
        "is a file, not a folder; give a path in a folder",
    )
for mistake, path, expected in (
    ("missing", lambda w: w.missing, "give the base model's folder"),
    ("a file", lambda w: w.file, "give the base model's folder"),
    ("folder without *.safetensors", lambda w: w.folder, "give the folder a model was"),
):
    row(
        "audit",
        "--base",
        mistake,
        lambda w, path=path: ["audit", w.adapter, "--base", path(w)],
        path,
        expected,
    )
for mistake, path in (("missing", lambda w: w.missing), ("a folder", lambda w: w.folder)):
    row(
        "suggest",
        "AUDIT_JSON",
        mistake,
        lambda w, path=path: ["suggest", path(w)],
        path,
        "give the audit JSON file",
    )
for budget in ([], ["--budget", "0.5x"]):
    label = " with --budget" if budget else ""
    row(
        "suggest",
        "--output",
        "existing folder" + label,
        lambda w, budget=budget: ["suggest", w.audit, *budget, "--output", w.folder],
        lambda w: w.folder,
        "is a folder; give a file name for the rank pattern JSON, e.g.",
    )
row(
    "suggest",
    "--output",
    "parent is a file",
    lambda w: ["suggest", w.audit, "--output", w.under_file],
    lambda w: w.under_file,
    "is a file, not a folder; give a path in a folder",
)
row(
    "suggest",
    "--output",
    "the audit being read",
    lambda w: ["suggest", w.audit, "--output", w.audit],
    lambda w: w.audit,
    "give another file",
)
for mistake, path in (("a file", lambda w: w.file), ("parent is a file", lambda w: w.under_file)):
    row(
        "compress",
        "--output",
        mistake,
        lambda w, path=path: ["compress", w.adapter, "--output", path(w)],
        path,
        "a folder for the compressed adapter",
    )
for mistake, path in (("missing", lambda w: w.missing), ("a folder", lambda w: w.folder)):
    row(
        "compress",
        "--ranks",
        mistake,
        lambda w, path=path: ["compress", w.adapter, "--output", w.root / "c", "--ranks", path(w)],
        path,
        RANKS,
    )
    row(
        "train",
        "--ranks",
        mistake,
        lambda w, path=path: [
            "train",
            "--config",
            w.config,
            "--ranks",
            path(w),
            "--output",
            w.root / "t",
        ],
        path,
        RANKS,
    )
    for cmd, argv in (
        (
            "train",
            lambda w, c: ["train", "--config", c, "--uniform", "2", "--output", w.root / "t"],
        ),
        ("eval", lambda w, c: ["eval", "--config", c, "--output", w.root / "e"]),
        ("mechanism run", lambda w, c: ["mechanism", "run", "--config", c]),
        ("mechanism power", lambda w, c: ["mechanism", "power", "--config", c]),
        ("mechanism analyze", lambda w, c: ["mechanism", "analyze", w.run, "--config", c]),
    ):
        row(cmd, "--config", mistake, lambda w, a=argv, p=path: a(w, p(w)), path, CONFIG)
for mistake, path in (("a file", lambda w: w.file), ("parent is a file", lambda w: w.under_file)):
    for cmd, argv, what in (
        (
            "train",
            lambda w, o: ["train", "--config", w.config, "--uniform", "2", "--output", o],
            "the trained adapter",
        ),
        ("eval", lambda w, o: ["eval", "--config", w.config, "--output", o], "the evaluation"),
        (
            "mechanism analyze",
            lambda w, o: ["mechanism", "analyze", w.run, "--output", o],
            "the analysis and report",
        ),
        # checked in the stage (experiment.runfolder): env.output_base_dir can name it too
        (
            "mechanism run",
            lambda w, o: ["mechanism", "run", "--config", w.config, "--output", o],
            "choose another --output",
        ),
    ):
        row(cmd, "--output", mistake, lambda w, a=argv, p=path: a(w, p(w)), path, what)
for mistake, path, expected in (
    ("missing", lambda w: w.missing, "give the adapter folder"),
    ("weights file", lambda w: w.weights, "give the adapter folder"),
    ("folder without adapter_config.json", lambda w: w.folder, "give the adapter folder"),
):
    row(
        "eval",
        "--adapter",
        mistake,
        lambda w, path=path: [
            "eval",
            "--config",
            w.config,
            "--adapter",
            path(w),
            "--output",
            w.root / "e",
        ],
        path,
        expected + " (the one with adapter_config.json) or a `gradience train` output folder",
    )
for cmd, argv, what in (
    ("mechanism status", lambda p: ["mechanism", "status", p], "give a run folder"),
    (
        "mechanism report",
        lambda p: ["mechanism", "report", p],
        "give the folder `gradience mechanism analyze` wrote to",
    ),
):
    for mistake, path in (
        ("missing", lambda w: w.missing),
        ("a file", lambda w: w.file),
        ("empty folder", lambda w: w.folder),
    ):
        row(cmd, "DIR", mistake, lambda w, a=argv, p=path: a(p(w)), path, what)
for mistake, path in (
    ("missing", lambda w: w.missing),
    ("a file", lambda w: w.file),
    ("folder without config.yaml", lambda w: w.folder),
):
    row(
        "mechanism run",
        "--reuse-jobs-from",
        mistake,
        lambda w, p=path: [
            "mechanism",
            "run",
            "--config",
            w.config,
            "--output",
            w.root / "r",
            "--no-estimate",
            "--reuse-jobs-from",
            p(w),
        ],  # fmt: skip
        path,
        "give the folder of another 'gradience mechanism run'",
    )
for mistake, path in (("missing", lambda w: w.missing), ("folder without it", lambda w: w.folder)):
    row(
        "mechanism analyze",
        "RESULTS",
        mistake,
        lambda w, p=path: ["mechanism", "analyze", p(w)],
        path,
        RESULTS,
    )
    row(
        "mechanism power",
        "--pilot",
        mistake,
        lambda w, p=path: ["mechanism", "power", "--config", w.config, "--pilot", p(w)],
        path,
        RESULTS,
    )


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gradience: error: "), err
    return lines[0]


@pytest.mark.parametrize("key", list(ROWS), ids=[" / ".join(k) for k in ROWS])
def test_a_wrong_path_is_one_line_saying_what_to_give(ws, key, capsys):
    argv, path, expected = ROWS[key]
    code = main([str(arg) for arg in argv(ws)])
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2, line
    assert str(path(ws)) in line, line
    assert expected in line, line


def test_a_wrong_output_leaves_the_file_in_the_way_untouched(ws, capsys):
    before = ws.file.read_bytes()
    for key in (("compress", "--output", "a file"), ("eval", "--output", "a file")):
        assert main([str(arg) for arg in ROWS[key][0](ws)]) == 2
    assert ws.file.read_bytes() == before
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "written"),
    [
        (
            lambda w, n: ["audit", w.adapter, "--output", n / "audit.json", "--plot", n / "p.png"],
            ("audit.json", "p.png"),
        ),
        (lambda w, n: ["suggest", w.audit, "--output", n / "ranks.json"], ("ranks.json",)),
        (lambda w, n: ["compress", w.adapter, "--output", n / "out"], ("out/compress.json",)),
        (
            lambda w, n: ["mechanism", "analyze", w.run, "--output", n / "a", "--no-report"],
            ("a/mechanism_analysis.json",),
        ),
    ],
    ids=["audit", "suggest", "compress", "mechanism analyze"],
)
def test_missing_parent_folders_of_an_output_are_created(ws, argv, written, capsys):
    new = ws.root / f"new-{len(list(ws.root.glob('new-*')))}" / "deeper"
    assert main([str(arg) for arg in argv(ws, new)]) == 0
    for name in written:
        assert (new / name).is_file(), name
    capsys.readouterr()


#: Arguments that take no path (the table above walks every one that does).
NOT_PATHS = {
    "--policies", "--allowed-ranks", "--margin", "--top", "--intruder-top-k",
    "--intruder-epsilon", "--policy", "--budget", "--allocator", "--server",
    "--vllm-version", "--uniform", "--seed", "--variant", "--audit-every", "--seeds",
    "--executor", "--ray-address", "--max-seeds", "--contrast",
}  # fmt: skip


def _arguments(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _arguments(sub, f"{prefix} {name}".strip())
        elif action.nargs != 0 and not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_every_path_argument_is_walked():
    """Every argument that takes a value is either in NOT_PATHS or has rows in the table, and
    every output argument's help says that missing parent folders are created."""
    walked = {(command, argument) for command, argument, _ in ROWS}
    for command, action in _arguments(build_parser()):
        name = action.option_strings[0] if action.option_strings else None
        if name in NOT_PATHS:
            continue
        label = name or {"adapter_dir": "ADAPTER_DIR", "audit_json": "AUDIT_JSON"}.get(
            action.dest, "RESULTS" if action.dest == "results" else "DIR"
        )
        assert (command, label) in walked, f"{command} {label}: no wrong-path rows"
        if name == "--output" or name == "--plot":
            assert "missing parent folders are created" in " ".join(action.help.split()), (
                command,
                name,
            )


@pytest.mark.parametrize(
    "argv",
    [
        lambda w: ["suggest", w.audit, "--output", w.folder],
        lambda w: ["audit", w.weights],
    ],
    ids=["suggest --output FOLDER", "audit WEIGHTS_FILE"],
)
def test_no_traceback_reaches_the_terminal(ws, argv):
    """As the user runs it: a fresh process, stderr exactly one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "gradience", *map(str, argv(ws))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_error_line(done.stderr)
    assert done.returncode == 2, line
    assert "give " in line
