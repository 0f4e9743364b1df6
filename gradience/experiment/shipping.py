"""Ray without a shared disk: job inputs and results travel through the object store.

In this mode (``env.ray_run_dir``, see :mod:`gradience.experiment.executors`) no task touches
the run folder. Each task works in a fresh folder under its node's scratch root
(``env.ray_scratch_dir``, default the node's temp dir; one subfolder per node), laid out like
the run folder:

* the driver packs the job's own files from the run folder into the task's arguments (its
  record and finished outputs, so a finished job is reused and an evaluation-only attempt
  stays one; never Trainer checkpoints, which stay on the node that wrote them);
* the upstream job's :class:`Shipment` arrives through its object ref: the audit gets the
  probe's adapter that way, a truncation the probe's adapter and record, every variant the
  rank files (and its seed's audit.json); a cross-seed truncation also gets the outcome of
  the other seed's audit, whose per_layer ranks it is cut to (only the outcome: no file of
  that seed enters its scratch folder), and owns its own rank file besides its folder;
* the task returns a :class:`Shipment`, its outcome and every file it owns, and removes its
  scratch folder.

The driver writes every shipped file into the run folder (:func:`deliver`), atomically, the
job's record last and after removing the old one: a driver killed halfway leaves a job
without a finished record, which the next run simply redoes. Absolute scratch paths in the
shipped JSON files (``adapter_dir``, an audit's adapter path) are rewritten to the run folder,
where the files now are.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.jobs import (
    JobOutcome,
    audit_job,
    probe_job,
    remove_outputs,
    variant_job,
)
from gradience.experiment.records import JOB_FILE
from gradience.io import write_bytes_atomic

if TYPE_CHECKING:
    from gradience.config import ExperimentConfig
    from gradience.tasks import TaskData

#: Never shipped: Trainer checkpoints (large, node-local by design), the audit's file in the
#: probe's folder (the audit job owns it), staging folders and temp files of atomic writes.
_NOT_SHIPPED = {"checkpoints", "audit.json", "adapter.partial"}
_TEXT_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Shipment:
    """A job's outcome and the files it owns, by path relative to the run folder."""

    outcome: JobOutcome
    files: dict[str, bytes]
    #: Job folders whose train/eval outputs the files replace (removed first on the driver).
    replaces: tuple[str, ...]
    #: The scratch folder the task ran in: rewritten to the run folder in shipped JSON files.
    scratch: str


# ---------------------------------------------------------------- what each job owns


def train_eval_owned(seed: int, variant: str) -> list[str]:
    """The job's folder; a cross-seed truncation also writes its ``ranks/<variant>.json``."""
    owned = [_rel(plan.job_dir(Path(), seed, variant))]
    if variant in plan.CROSS_SEED:
        owned.append(_rel(plan.ranks_file(Path(), seed, variant)))
    return owned


def audit_owned(seed: int, cfg: ExperimentConfig) -> list[str]:
    """The audit's record, the rank files it writes (not the cross-seed variants', which their
    own jobs write into the same folder) and the probe's audit.json."""
    ranks = plan.job_dir(Path(), seed, plan.AUDIT)
    return [
        _rel(ranks / JOB_FILE),
        *(_rel(plan.ranks_file(Path(), seed, v)) for v in plan.audit_variants(cfg)),
        _rel(plan.audit_file(Path(), seed)),
    ]


def _rel(path: Path) -> str:
    return path.as_posix()


def pack(run_dir: Path, owned: Iterable[str]) -> dict[str, bytes]:
    """Every file under the ``owned`` paths (files or folders) of ``run_dir``, but those never
    shipped."""
    files: dict[str, bytes] = {}
    for rel in owned:
        path = run_dir / rel
        if path.is_file():
            files[rel] = path.read_bytes()
            continue
        if not path.is_dir():
            continue
        for item in sorted(path.rglob("*")):
            inner = item.relative_to(path)
            if (
                item.is_file()
                and not (set(inner.parts) & _NOT_SHIPPED)
                and not item.name.endswith(".tmp")
            ):
                files[_rel(item.relative_to(run_dir))] = item.read_bytes()
    return files


def unpack(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` under ``run_dir`` (a task's scratch folder)."""
    for rel, data in files.items():
        write_bytes_atomic(run_dir / _inside(rel), data)


# ---------------------------------------------------------------- the driver's side


def deliver(run_dir: Path, shipment: Shipment) -> JobOutcome:
    """Write a task's files into the run folder (records last) and return its outcome."""
    files = {
        rel: relocate(rel, data, shipment.scratch, str(run_dir))
        for rel, data in shipment.files.items()
    }
    changed = [rel for rel, data in files.items() if not _holds(run_dir / rel, data)]
    if changed:
        records = [rel for rel in files if Path(rel).name == JOB_FILE]
        for rel in records:
            (run_dir / rel).unlink(missing_ok=True)
        for folder in shipment.replaces:
            remove_outputs(run_dir / folder)
        for rel in (r for r in files if r not in records):
            write_bytes_atomic(run_dir / _inside(rel), files[rel])
        for rel in records:
            write_bytes_atomic(run_dir / _inside(rel), files[rel])
    return shipment.outcome


def relocate(rel: str, data: bytes, scratch: str, run_dir: str) -> bytes:
    """A JSON file's bytes with the task's scratch folder replaced by the run folder."""
    if not rel.endswith(_TEXT_SUFFIXES):
        return data
    return data.replace(scratch.encode(), run_dir.encode())


def _inside(rel: str) -> Path:
    """A shipped path, checked to stay inside the folder it is written into."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise GradienceError(f"a Ray task shipped a file outside the run folder: {rel!r}")
    return path


def _holds(path: Path, data: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data


# ---------------------------------------------------------------- the tasks


def in_scratch(
    ctx: plan.RunContext,
    inputs: dict[str, bytes],
    upstream: Iterable[Shipment | None],
    owned: list[str],
    replaces: tuple[str, ...],
    job: Callable[[plan.RunContext], JobOutcome],
) -> Shipment:
    """Run ``job`` in a fresh scratch folder holding ``inputs`` and the upstream files."""
    root = scratch_root(ctx)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="job-", dir=root) as folder:
        local = dataclasses.replace(ctx, run_dir=Path(folder))
        for shipment in upstream:
            if shipment is not None:
                unpack(local.run_dir, shipment.files)
        unpack(local.run_dir, inputs)
        outcome = job(local)
        return Shipment(outcome, pack(local.run_dir, owned), replaces, str(local.run_dir))


def scratch_root(ctx: plan.RunContext) -> Path:
    """This node's scratch root: ``env.ray_scratch_dir`` (or the temp dir) / ``node-<id>``."""
    import ray

    base = ctx.cfg.env.ray_scratch_dir or tempfile.gettempdir()
    node = ray.get_runtime_context().get_node_id()[:16]
    return Path(base).expanduser() / f"gradience-node-{node}"


def shipped_probe(
    ctx: plan.RunContext, seed: int, task_data: TaskData, inputs: dict[str, bytes]
) -> Shipment:
    owned = train_eval_owned(seed, plan.PROBE)
    return in_scratch(ctx, inputs, [], owned, tuple(owned), lambda c: probe_job(c, seed, task_data))


def shipped_audit(
    ctx: plan.RunContext, seed: int, probe: Shipment, inputs: dict[str, bytes]
) -> Shipment:
    return in_scratch(
        ctx,
        inputs,
        [probe],
        audit_owned(seed, ctx.cfg),
        (),
        lambda c: audit_job(c, seed, probe.outcome),
    )


def shipped_variant(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    audit: Shipment,
    task_data: TaskData,
    inputs: dict[str, bytes],
    probe: Shipment | None = None,
    source: Shipment | None = None,
) -> Shipment:
    """``probe``: the probe's shipment, for the variants that truncate its adapter;
    ``source``: the shipment of the audit a cross-seed variant takes its ranks from."""
    source_outcome = source.outcome if source is not None else None
    return in_scratch(
        ctx,
        inputs,
        [probe, audit],
        train_eval_owned(seed, variant),
        (_rel(plan.job_dir(Path(), seed, variant)),),
        lambda c: variant_job(c, seed, variant, audit.outcome, task_data, None, source_outcome),
    )
