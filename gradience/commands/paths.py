"""What each command's path arguments must be, said once, so every command words it alike.

The checks themselves are ``gradience.io``'s (``require_file``, ``require_dir``,
``require_file_in``, ``output_file``, ``output_dir``); this module only names what to give and
wraps the calls every command repeats. It imports ``gradience.io`` inside the functions, so that
registering the commands (``gradience --help``) imports nothing heavy.

One rule for outputs, said in every ``--help``: missing parent folders are created; an output
whose path runs through a file, or a file name that is an existing folder, is refused.
"""

from __future__ import annotations

from pathlib import Path

#: Appended to the help of every output argument.
CREATED = " (missing parent folders are created)"

ADAPTER = "the adapter folder (the one with adapter_config.json)"
TRAINED_ADAPTER = (
    "the adapter folder (the one with adapter_config.json) or a `gradience train` output folder"
)
CONFIG = "an experiment YAML file (e.g. experiments/configs/tiny_test.yaml)"
AUDIT_JSON = "the audit JSON file that `gradience audit ADAPTER_DIR --output FILE` wrote"
RANKS_JSON = "a rank pattern JSON file that `gradience suggest --output FILE` wrote"
RESULTS = "aggregated_results.json or the run folder holding it"
RUN_DIR = "a run folder that `gradience mechanism run` wrote (the one with config.yaml)"
ANALYSIS_DIR = (
    "the folder `gradience mechanism analyze` wrote to (the one with mechanism_analysis.json)"
)


def adapter_dir(path: str | Path) -> Path:
    """A PEFT adapter folder: it exists, is a folder, and holds adapter_config.json."""
    from gradience.io import require_dir

    return require_dir(path, ADAPTER, noun="adapter directory", contains="adapter_config.json")


def config_file(path: str | Path, field: str = "--config") -> Path:
    """An existing config file (its content is load_config's to check)."""
    from gradience.io import require_file

    return require_file(path, CONFIG, noun="config file", field=field)


def ranks_file(path: str | Path, field: str = "--ranks") -> Path:
    """An existing rank pattern file (its content is read_model's to check)."""
    from gradience.io import require_file

    return require_file(path, RANKS_JSON, field=field)


def results_file(path: str | Path, field: str | None = None) -> Path:
    """aggregated_results.json, given as the file or as the run folder holding it."""
    from gradience.io import require_file_in

    return require_file_in(
        path, "aggregated_results.json", RESULTS, noun="aggregated results", field=field
    )
