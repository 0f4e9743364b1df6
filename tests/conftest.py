"""Fixtures shared by the test modules that train or generate with the embedded model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: a 1M-parameter model gains nothing from more threads
    and loses a lot when the 2 cores are shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reliability_config_file(tmp_path_factory):
    """The smallest real mechanism test (tests/fixtures/reliability.py), as a YAML file."""
    from fixtures.reliability import reliability_config, write_config

    return write_config(reliability_config(), tmp_path_factory.mktemp("config") / "small.yaml")


@pytest.fixture(scope="session")
def reference_run(reliability_config_file, tmp_path_factory):
    """One uninterrupted run of that config: what every interrupted or repeated run must equal."""
    from gradience.config import load_config
    from gradience.experiment import run_mechanism_test

    run = run_mechanism_test(
        load_config(reliability_config_file), tmp_path_factory.mktemp("reference") / "run"
    )
    assert run.complete
    return run.run_dir
