"""Nothing from outside runs code: no unpickling by default, no remote code unless the config
says so, YAML through safe_load, run-folder paths that stay inside the run folder, and a Ray
that gradience starts listens on the loopback address only, without a dashboard."""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.reliability import REPO, reliability_config, write_config

from gradience.cli import main
from gradience.config import ModelConfig
from gradience.errors import GradienceError
from gradience.experiment import plan, run_mechanism_test
from gradience.experiment.jobs import JobEvent
from gradience.experiment.records import read_record
from gradience.models.hub import load_hub_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EMBEDDED_ASSETS = next((REPO / "gradience" / "models" / "assets").iterdir())


class Payload:
    """A pickle that creates ``marker`` when unpickled: what a malicious .bin/.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> Path:
    torch.save({"weight": Payload(marker)}, path)
    return path


def refused(argv: list, capsys) -> str:
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- pickles


def test_a_pickled_adapter_is_never_unpickled(reference_run, tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shutil.copy(reference_run / "seed_42" / "probe" / "adapter" / "adapter_config.json", adapter)
    plant_pickle(adapter / "adapter_model.bin", marker)
    assert "--allow-pickle" in refused(["audit", adapter], capsys)
    # Opted in, it is still loaded with weights_only=True, which refuses the payload.
    assert "weights_only=True" in refused(["audit", adapter, "--allow-pickle"], capsys)
    config = write_config(reliability_config(), tmp_path / "c.yaml")
    line = refused(["eval", "--config", config, "--adapter", adapter, "--output", tmp_path], capsys)
    assert "pickled .bin adapters are not loaded" in line
    assert not marker.exists()


def test_a_model_with_only_pickle_weights_is_refused(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    model = shutil.copytree(EMBEDDED_ASSETS, tmp_path / "model")
    (model / "model.safetensors").unlink()
    plant_pickle(model / "pytorch_model.bin", marker)
    cfg = reliability_config()
    cfg.model.name = str(model)
    config = write_config(cfg, tmp_path / "c.yaml")
    out = tmp_path / "out"
    line = refused(["train", "--config", config, "--uniform", "2", "--output", out], capsys)
    assert f"{config}: model.allow_pickle:" in line and "no safetensors weights" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_a_planted_pickle_in_a_checkpoint_is_not_run_on_resume(tmp_path) -> None:
    cfg = reliability_config()
    run = tmp_path / "run"

    def stop_after_first_checkpoint(event: JobEvent) -> None:
        if event.kind == "progress" and event.data.get("step") == 4:
            raise KeyboardInterrupt  # as Ctrl-C would: the probe is left to be resumed

    with pytest.raises(KeyboardInterrupt):
        run_mechanism_test(cfg, run, sink=stop_after_first_checkpoint)
    checkpoint = run / "seed_42" / "probe" / "checkpoints" / "checkpoint-3"
    marker = tmp_path / "PWNED"
    plant_pickle(checkpoint / "optimizer.pt", marker)  # someone with write access to the run
    resumed = run_mechanism_test(cfg, run)
    assert not marker.exists()
    assert resumed.outcomes["seed_42/probe"].status == "failed"
    assert "Weights only load failed" in read_record(run / "seed_42" / "probe").error


def test_no_unpickling_yaml_loading_or_remote_code_switch_in_the_package() -> None:
    """Static guard: every torch.load asks for weights_only=True; no pickle, no yaml.load;
    trust_remote_code, as a keyword or a kwargs-dict key, only ever comes from the config."""
    remote_code_settings = []
    for path in sorted((REPO / "gradience").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "marshal"} & set(names), where
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        remote_code_settings.append((where, ast.unparse(value)))
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if func == "torch.load":
                assert keywords.get("weights_only") == "True", where
            assert func not in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"), where
            if "trust_remote_code" in keywords:
                remote_code_settings.append((where, keywords["trust_remote_code"]))
    assert remote_code_settings, "found no trust_remote_code at all: the check would prove nothing"
    for where, value in remote_code_settings:
        assert value == "model_cfg.trust_remote_code", where


# ---------------------------------------------------------------- remote code, YAML


def test_remote_code_is_refused_unless_the_config_turns_it_on(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    model = shutil.copytree(EMBEDDED_ASSETS, tmp_path / "model")
    config_json = json.loads((model / "config.json").read_text())
    config_json["model_type"] = "evil"  # an architecture only its own code defines
    config_json["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
    }
    (model / "config.json").write_text(json.dumps(config_json))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = reliability_config()
    cfg.model.name = str(model)
    config = write_config(cfg, tmp_path / "c.yaml")
    line = refused(
        ["train", "--config", config, "--uniform", "2", "--output", tmp_path / "o"], capsys
    )
    assert f"{config}: model.trust_remote_code:" in line and "ships its own Python code" in line
    assert not marker.exists()


def test_turning_remote_code_on_is_logged(tmp_path, caplog) -> None:
    model = ModelConfig(name=str(tmp_path / "no-model-here"), trust_remote_code=True)
    with caplog.at_level(logging.WARNING), pytest.raises(GradienceError):
        load_hub_model(model, torch.float32, torch.device("cpu"))
    assert f"model.trust_remote_code is on: {model.name}" in caplog.text


def test_yaml_tags_that_would_run_code_are_refused(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    data = reliability_config().model_dump(mode="json")
    text = yaml.safe_dump(data) + f'extra: !!python/object/apply:pathlib.Path.touch ["{marker}"]\n'
    config.write_text(text)
    line = refused(["mechanism", "run", "--config", config, "--output", tmp_path / "run"], capsys)
    assert f"{config}: not valid YAML" in line and "python/object/apply" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".", "", "probe\x00", "/etc"])
def test_run_folder_paths_from_names_stay_inside_the_run(name, tmp_path) -> None:
    with pytest.raises(GradienceError, match="cannot name a file in the run folder"):
        plan.job_dir(tmp_path, 42, name)
    with pytest.raises(GradienceError, match="cannot name a file in the run folder"):
        plan.ranks_file(tmp_path, 42, name)


def test_every_path_a_config_can_produce_is_inside_the_run(tmp_path) -> None:
    cfg = reliability_config()
    cfg.train.seeds = [-1, 0, 2**40]
    cfg.compression.variants = ["probe", "per_layer", "per_layer_shuffled_k"]
    for seed in cfg.train.seeds:
        for name in [plan.AUDIT, *plan.trained_variants(cfg)]:
            for path in (plan.job_dir(tmp_path, seed, name), plan.ranks_file(tmp_path, seed, name)):
                assert path.resolve().is_relative_to(tmp_path.resolve()), path


# ---------------------------------------------------------------- Ray

LISTENING_SOCKETS = r"""
import json, os, re, sys
from gradience.experiment.executors import start_ray

# As `mechanism run --executor ray` does it: Ray not imported before.
context = start_ray(None, dashboard=False)
import ray

dashboard = context.dashboard_url
children = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
    except OSError:
        continue
    children.setdefault(ppid, []).append(pid)
tree, todo = set(), [str(os.getpid())]
while todo:
    pid = todo.pop()
    tree.add(pid)
    todo += children.get(pid, [])
inodes = set()
for pid in tree:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            m = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if m:
                inodes.add(m.group(1))
    except OSError:
        pass
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).readlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN, owned by the Ray tree
            listening.append(fields[1].split(":")[0])
ray.shutdown()
print(json.dumps({"listening": listening, "dashboard": dashboard or None}))
"""
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.mark.slow
def test_a_ray_that_gradience_starts_listens_on_loopback_only_without_dashboard() -> None:
    pytest.importorskip("ray")
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("reads listening sockets from Linux's /proc")
    result = subprocess.run(
        [sys.executable, "-c", LISTENING_SOCKETS], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["listening"], "found no listening socket of Ray: the check would prove nothing"
    assert set(report["listening"]) <= LOOPBACK, report
    assert report["dashboard"] is None
