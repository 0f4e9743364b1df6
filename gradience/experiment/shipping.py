"""Ray without a shared disk: job inputs and results travel through the object store.

In this mode (``env.ray_run_dir``, see :mod:`gradience.experiment.executors`) no task touches
the run folder. Each task works in its job's folder under its node's scratch root
(``env.ray_scratch_dir``, default the node's temp dir; one subfolder per node), laid out like
the run folder and named after the run and the job (:func:`job_scratch`), so that every
attempt of one job on one node works in the same folder:

* the driver packs the job's own files from the run folder into the task's arguments (its
  record and finished outputs, so a finished job is reused and an evaluation-only attempt
  stays one; never Trainer checkpoints, which stay on the node that wrote them);
* the upstream job's :class:`Shipment` arrives through its object ref: the audit gets the
  probe's adapter that way, a truncation the probe's adapter and record, every variant the
  rank files (and its seed's audit.json); a cross-seed truncation also gets the outcome of
  the other seed's audit, whose per_layer ranks it is cut to (only the outcome: no file of
  that seed enters its scratch folder), and owns its own rank file besides its folder;
* the task returns a :class:`Shipment`, its outcome and every file it owns, and removes its
  scratch folder; a job that failed keeps its Trainer checkpoints there (nothing else), as a
  shared run folder would: a rerun whose task lands on this node resumes them, and removes
  them once the job has finished. (Checkpoints of a job that never finishes on this node stay
  until someone removes them: the scratch root may be emptied whenever no run is going.)

**Retries resume.** Ray retries a task whose worker died (an out-of-memory kill, a crash in
CUDA); the retry starts by removing what the dead attempt left in the job's folder except its
checkpoints (``checkpoints/`` of the job), then proceeds as above: training resumes from the
last complete checkpoint of the same training (:mod:`gradience.train.run` checks that it is),
when ``train.save_steps`` writes checkpoints and ``env.resume_from_checkpoint`` is on. A retry
that Ray places on another node finds no checkpoint there and trains from step 0; so does
an attempt on a node that was restarted or replaced (the scratch root is named after Ray's
node id, which a restart changes). With a shared run folder (``env.ray_run_dir: shared``)
checkpoints live in the run folder and any node resumes.

The driver writes every shipped file into the run folder (:func:`deliver`), atomically, the
job's record last and after removing the old one: a driver killed halfway leaves a job
without a finished record, which the next run simply redoes. Absolute scratch paths in the
shipped JSON files (``adapter_dir``, an audit's adapter path) are rewritten to the run folder,
where the files now are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.audit_job import audit_job
from gradience.experiment.jobs import JobOutcome, probe_job, remove_outputs, variant_job
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
    """The job's folder; a cross-seed or model-allocated variant also writes its
    ``ranks/<variant>.json``."""
    owned = [_rel(plan.job_dir(Path(), seed, variant))]
    if variant in plan.OWN_RANKS:
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
    job_id: str,
    inputs: dict[str, bytes],
    upstream: Iterable[Shipment | None],
    owned: list[str],
    replaces: tuple[str, ...],
    job: Callable[[plan.RunContext], JobOutcome],
    checkpoints: str | None = None,
) -> Shipment:
    """Run ``job`` in the job's scratch folder holding ``inputs`` and the upstream files.

    ``checkpoints``: the job's checkpoint folder (relative to the run folder), kept from an
    earlier attempt and, when this one fails, for a later one (see the module docstring).
    """
    folder = job_scratch(ctx, job_id)
    kept = folder / checkpoints if checkpoints and resumes(ctx) else None
    clear(folder, kept)  # an earlier attempt's leftovers, but its checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    local = dataclasses.replace(ctx, run_dir=folder)
    for shipment in upstream:
        if shipment is not None:
            unpack(local.run_dir, shipment.files)
    unpack(local.run_dir, inputs)
    outcome = job(local)
    shipment = Shipment(outcome, pack(local.run_dir, owned), replaces, str(local.run_dir))
    clear(folder, kept if outcome.status == "failed" else None)
    return shipment


def scratch_root(ctx: plan.RunContext) -> Path:
    """This node's scratch root: ``env.ray_scratch_dir`` (or the temp dir) / ``node-<id>``."""
    import ray

    base = ctx.cfg.env.ray_scratch_dir or tempfile.gettempdir()
    node = ray.get_runtime_context().get_node_id()[:16]
    return Path(base).expanduser() / f"gradience-node-{node}"


def job_scratch(ctx: plan.RunContext, job_id: str) -> Path:
    """Where every attempt of ``job_id`` (``seed_42/probe``) of this run works on this node:
    ``<scratch root>/run-<12 hex of the run folder's path>-seed_42-probe``."""
    return scratch_root(ctx) / scratch_name(ctx.run_dir, job_id)


def scratch_name(run_dir: Path, job_id: str) -> str:
    """The job's scratch folder name: the run (its folder's path, hashed) and the job."""
    run = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    seed, name = job_id.split("/", 1)
    return f"run-{run}-{plan.path_component(seed)}-{plan.path_component(name)}"


def resumes(ctx: plan.RunContext) -> bool:
    """Whether a job's training can resume at all: it writes checkpoints and may resume."""
    return ctx.cfg.train.save_steps is not None and ctx.cfg.env.resume_from_checkpoint


def clear(folder: Path, keep: Path | None = None) -> None:
    """Remove ``folder`` and all in it, but ``keep`` (a path inside it) when that exists."""
    if not folder.is_dir():
        return
    if keep is None or not keep.exists():
        shutil.rmtree(folder)
        return
    for item in folder.iterdir():
        if item == keep:
            continue
        if item.is_dir() and not item.is_symlink():
            if keep.is_relative_to(item):
                clear(item, keep)
            else:
                shutil.rmtree(item)
        else:
            item.unlink()


def shipped_probe(
    ctx: plan.RunContext, seed: int, task_data: TaskData, inputs: dict[str, bytes]
) -> Shipment:
    owned = train_eval_owned(seed, plan.PROBE)
    return in_scratch(
        ctx,
        plan.job_id(seed, plan.PROBE),
        inputs,
        [],
        owned,
        tuple(owned),
        lambda c: probe_job(c, seed, task_data),
        checkpoints_of(seed, plan.PROBE),
    )


def shipped_audit(
    ctx: plan.RunContext, seed: int, probe: Shipment, inputs: dict[str, bytes]
) -> Shipment:
    return in_scratch(
        ctx,
        plan.job_id(seed, plan.AUDIT),
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
        plan.job_id(seed, variant),
        inputs,
        [probe, audit],
        train_eval_owned(seed, variant),
        (_rel(plan.job_dir(Path(), seed, variant)),),
        lambda c: variant_job(c, seed, variant, audit.outcome, task_data, None, source_outcome),
        checkpoints_of(seed, variant),
    )


def checkpoints_of(seed: int, variant: str) -> str:
    """A train+eval job's Trainer checkpoint folder, relative to the run folder."""
    from gradience.train.run import CHECKPOINT_DIR

    return _rel(plan.job_dir(Path(), seed, variant) / CHECKPOINT_DIR)
