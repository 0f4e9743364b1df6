"""Executors: run the jobs of :mod:`gradience.experiment.jobs` one by one, or as Ray tasks.

Both run the very same job functions; only the plumbing differs. ``local`` calls them in
order in this process (the task data is loaded once and shared; events go straight to the
progress view). ``ray`` submits every job as a task, wiring each seed's DAG with object
refs (probe -> audit -> variants, and a cross-seed truncation also on the audit of the seed
its ranks come from); Ray decides where and when each runs:

* every train+eval task takes one GPU when the cluster has GPUs, and then runs in a fresh
  worker process (``max_calls=1``): a reused worker would keep the previous job's CUDA context
  and memory, and could take a job meant for another GPU. A CPU-only task has none of these,
  so its worker is reused and the next job skips the ~7 s of importing torch, transformers
  and PEFT (the jobs are as independent as on the local executor, which runs them all in
  one process: same seeds, same bits);
* a config that asks for CUDA never falls back to CPU because the cluster has no GPU (yet,
  on an autoscaling cluster): the run stops before submitting anything;
* jobs reach the run folder one of two ways (``env.ray_run_dir``): on a disk every node
  shares, where they read and write it directly (the run checks up front that every node
  sees it, and the live view follows running jobs' records); or through the object store,
  where each task works in a node-local scratch folder and the driver writes every file
  (:mod:`gradience.experiment.shipping`; the view then shows jobs as they finish). ``auto``
  takes the first when every node sees the run folder, else the second;
* each task's CPUs, its environment variables and the code the nodes run come from
  :mod:`gradience.experiment.ray_setup` (``env.ray_cpus_per_task``, ``env.ray_env_vars``).
  Ray retries a task whose worker died (its default, 3 retries); in object-store mode the
  retry finds the Trainer checkpoints of the attempt that died when it runs on the same node.

How much faster than one GPU the DAG can be (equal-length train+eval jobs of time t; the
audit takes seconds on a CPU and is left out). With S seeds and V trained variants, one GPU
takes S(1+V)t. On G >= S GPUs, only the S probes can run during the first t, then the S·V
variants run ceil(S·V/G) to a GPU: speed-up = S(1+V) / (1 + ceil(S·V/G)), at most
S(1+V)/2 (reached at G >= S·V: every chain is probe -> variant, 2t). On G < S GPUs the work
bounds it: S(1+V) / ceil(S(1+V)/G), i.e. about G. The flagship (S = 3, V = 3: per_layer and
the two shuffles; 12 jobs): 1, 2, 3, 3, 4, 4, 4, 4, 6 on 1..9 GPUs: 3x on 3 GPUs and still on
4; 6x is the ceiling. With unequal jobs (probe p, variants v, eval-only truncations e, the
base model's evaluation b in the first seed's probe), the bounds are: work W/G, with
W = S(p + V·v + V_e·e) + b; the first probe's end, p + (W - min(S,G)·p)/G; the longest
chain, p + b + max(v, e). Cross-seed truncations (``plan.CROSS_SEED``) wait for two seeds'
audits, which all end by p when G >= S: they add no depth. ``--until-decided`` runs the
first min_seeds seeds as above, then adds seeds (one per step on Ray, ``env.workers`` on
the local executor): a step with k new seeds has k(1+V) jobs (earlier jobs are reused,
but the previously last seed's cross-seed truncations are redone, their rank source having
changed) and gains at most k(1+V) / (1 + ceil(k·V/G)): on Ray, k = 1, (1+V)/2 at best
(1.5x for the decisive config's V = 2), and all but one GPU idle while each probe trains.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.audit_job import audit_job
from gradience.experiment.jobs import EventSink, JobOutcome, emit, probe_job, variant_job
from gradience.experiment.ray_setup import (
    AUDIT_CPUS,
    check_task_fits,
    code_runtime_env,
    job_resources,
    run_dir_is_shared,
    task_runtime_env,
)
from gradience.experiment.records import JobProgress, JobRecord, read_record
from gradience.heap import collections_skip_older_objects

if TYPE_CHECKING:
    from gradience.tasks import TaskData

#: How often the Ray driver looks at finished tasks and running jobs' records (seconds).
RAY_POLL_S = 1.0
#: Ray's single-node switch: with "0" a local Ray binds its servers to the loopback address.
LOCAL_RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def run_locally(
    ctx: plan.RunContext, task_data: TaskData, sink: EventSink | None = None
) -> dict[str, JobOutcome]:
    """Every seed: probe, gate + audit, each variant; writes a seed's bench when done.

    Seeds run one after another in this process, or ``env.workers`` at a time in worker
    processes (:mod:`gradience.experiment.parallel`). With ``env.reuse_base_model`` (default:
    on where safe) each process loads the base model once and lends it to each of its jobs
    (:mod:`gradience.models.reuse`).
    """
    from gradience.models.reuse import reuse_base_model, reusing_base_model

    seeds = list(ctx.cfg.train.seeds)
    if ctx.cfg.env.workers > 1 and len(seeds) > 1:
        from gradience.experiment.parallel import run_seeds_in_workers

        return run_seeds_in_workers(ctx, task_data, sink)
    with reusing_base_model(reuse_base_model(ctx.cfg, "local")):
        return run_schedule(ctx, task_data, sink)


def run_schedule(
    ctx: plan.RunContext, task_data: TaskData, sink: EventSink | None = None
) -> dict[str, JobOutcome]:
    """Every job in :func:`plan.local_schedule` order (per seed: probe, gate + audit, each
    variant; a cross-seed truncation once its rank source's audit has run too); a seed's
    bench is written when its last job has finished."""
    from gradience.experiment.aggregate import write_seed_bench

    schedule = plan.local_schedule(ctx.cfg)
    left = {seed: sum(1 for s, _ in schedule if s == seed) for seed in ctx.cfg.train.seeds}
    probes: dict[int, JobOutcome] = {}
    audits: dict[int, JobOutcome] = {}
    outcomes: dict[str, JobOutcome] = {}
    with collections_skip_older_objects():  # one full collection for the run, not one a job
        for seed, name in schedule:
            if name == plan.PROBE:
                outcome = probes[seed] = probe_job(ctx, seed, task_data, sink)
            elif name == plan.AUDIT:
                outcome = audits[seed] = audit_job(ctx, seed, probes[seed], sink)
            else:
                source = audits.get(plan.rank_source_seed(ctx.cfg, seed, name))
                outcome = variant_job(ctx, seed, name, audits[seed], task_data, sink, source)
            outcomes[outcome.job] = outcome
            left[seed] -= 1
            if left[seed] == 0:
                write_seed_bench(ctx, seed)
    return outcomes


def run_on_ray(
    ctx: plan.RunContext,
    task_data: TaskData,
    sink: EventSink | None = None,
    address: str | None = None,
) -> dict[str, JobOutcome]:
    """Submit every job as a Ray task (one GPU each when the cluster has GPUs) and wait for all.

    Uses the Ray instance already initialised in this process if there is one; otherwise
    starts one (:func:`start_ray`, shipping this gradience package to the nodes) and shuts it
    down afterwards.
    """
    try:
        import ray
    except ImportError:
        raise GradienceError(
            "the ray executor needs Ray: pip install 'ray'", field="env.executor"
        ) from None
    from gradience.models.reuse import reuse_base_model

    reuse_base_model(ctx.cfg, "ray")  # env.reuse_base_model: true is an error here
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(address, dashboard=ctx.cfg.env.ray_dashboard, runtime_env=code_runtime_env())
    try:
        resources = job_resources(ctx, ray.cluster_resources().get("GPU", 0))
        check_task_fits(resources, ray.nodes())
        runtime_env = task_runtime_env(ctx.cfg.env)
        if runtime_env:
            resources["runtime_env"] = runtime_env
        shared = run_dir_is_shared(ctx)
        watcher = RecordWatcher(ctx, sink)  # before submitting: every record change is news
        submit = submit_jobs if shared else submit_shipped_jobs
        return wait_for_jobs(submit(ctx, task_data, resources), watcher, ctx.run_dir)
    finally:
        if started_here:
            ray.shutdown()


def start_ray(
    address: str | None, *, dashboard: bool = False, runtime_env: dict[str, Any] | None = None
) -> Any:
    """``ray.init(address=address, runtime_env=runtime_env)``; None (and no RAY_ADDRESS) starts
    a new local Ray, bound to 127.0.0.1 only.

    Ray's servers listen on every interface of the machine's address by default, and its
    dashboard can submit jobs: a local run needs neither. Ray picks the loopback address when
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before it is first imported (its single-node
    setting; on Linux too), so gradience sets it for a local start unless the user set it. A
    process that imported Ray earlier keeps Ray's choice. The dashboard starts only when
    ``env.ray_dashboard`` asks, and then on 127.0.0.1. Returns Ray's context.
    """
    # RAY_ADDRESS is the user's own choice; else "local", not None: None would join the last
    # cluster anyone started on this machine (/tmp/ray/ray_current_cluster), not start ours.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault(LOCAL_RAY_ENV, "0")
    import ray

    try:
        return ray.init(
            address=address or "local",
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            runtime_env=runtime_env,
        )
    except ConnectionError as error:
        raise GradienceError(
            f"cannot connect to Ray at {address!r}: {error}", field="env.ray_address"
        ) from None


def submit_jobs(
    ctx: plan.RunContext, task_data: TaskData, train_eval: dict[str, Any]
) -> dict[str, Any]:
    """Every seed's DAG as Ray tasks; dependencies are object refs, nothing else."""
    import ray

    probe_task = ray.remote(**task_options(train_eval))(probe_job)
    audit_task = ray.remote(**audit_options(train_eval))(audit_job)
    variant_task = ray.remote(**task_options(train_eval))(variant_job)
    data_ref = ray.put(task_data)
    probes = {seed: probe_task.remote(ctx, seed, data_ref) for seed in ctx.cfg.train.seeds}
    audits = {seed: audit_task.remote(ctx, seed, probes[seed]) for seed in ctx.cfg.train.seeds}
    refs: dict[str, Any] = {}
    for seed in ctx.cfg.train.seeds:
        refs[plan.job_id(seed, plan.PROBE)] = probes[seed]
        refs[plan.job_id(seed, plan.AUDIT)] = audits[seed]
        for variant in plan.trained_variants(ctx.cfg)[1:]:
            source = rank_source_ref(ctx, seed, variant, audits)
            refs[plan.job_id(seed, variant)] = variant_task.remote(
                ctx, seed, variant, audits[seed], data_ref, None, source
            )
    return refs


def task_options(train_eval: dict[str, Any]) -> dict[str, Any]:
    """A train+eval task's options: on a GPU, a fresh worker process per job (``max_calls=1``),
    so nothing (a CUDA context, a model, a GPU assignment) carries over to the next job; on
    CPUs alone, Ray's default (the worker is reused). Ray takes max_calls only in the
    decorator form (``.options()`` refuses it)."""
    if train_eval.get("num_gpus", 0) > 0:
        return {**train_eval, "max_calls": 1}
    return dict(train_eval)


def audit_options(train_eval: dict[str, Any]) -> dict[str, Any]:
    """The audit task's options: one CPU, and the train+eval tasks' runtime_env, if any."""
    options: dict[str, Any] = {"num_cpus": AUDIT_CPUS}
    if "runtime_env" in train_eval:
        options["runtime_env"] = train_eval["runtime_env"]
    return options


def rank_source_ref(ctx: plan.RunContext, seed: int, variant: str, audits: dict[int, Any]) -> Any:
    """The audit a cross-seed variant also waits for (its ranks' source), None for the others."""
    if variant not in plan.CROSS_SEED:
        return None
    return audits[plan.rank_source_seed(ctx.cfg, seed, variant)]


def submit_shipped_jobs(
    ctx: plan.RunContext, task_data: TaskData, train_eval: dict[str, Any]
) -> dict[str, Any]:
    """:func:`submit_jobs` for a run folder the nodes do not share: the tasks get the jobs'
    files from the driver and their upstream jobs' shipments, and return their own."""
    import ray

    from gradience.experiment import shipping

    probe_task = ray.remote(**task_options(train_eval))(shipping.shipped_probe)
    audit_task = ray.remote(**audit_options(train_eval))(shipping.shipped_audit)
    variant_task = ray.remote(**task_options(train_eval))(shipping.shipped_variant)
    data_ref = ray.put(task_data)
    probes, audits = {}, {}
    for seed in ctx.cfg.train.seeds:
        probe_files = shipping.pack(ctx.run_dir, shipping.train_eval_owned(seed, plan.PROBE))
        probes[seed] = probe_task.remote(ctx, seed, data_ref, probe_files)
        audit_files = shipping.pack(ctx.run_dir, shipping.audit_owned(seed, ctx.cfg))
        audits[seed] = audit_task.remote(ctx, seed, probes[seed], audit_files)
    refs: dict[str, Any] = {}
    for seed in ctx.cfg.train.seeds:
        refs[plan.job_id(seed, plan.PROBE)] = probes[seed]
        refs[plan.job_id(seed, plan.AUDIT)] = audits[seed]
        for variant in plan.trained_variants(ctx.cfg)[1:]:
            files = shipping.pack(ctx.run_dir, shipping.train_eval_owned(seed, variant))
            probe = probes[seed] if variant in plan.TRUNCATED else None
            source = rank_source_ref(ctx, seed, variant, audits)
            refs[plan.job_id(seed, variant)] = variant_task.remote(
                ctx, seed, variant, audits[seed], data_ref, files, probe, source
            )
    return refs


def wait_for_jobs(
    refs: dict[str, Any], watcher: RecordWatcher, run_dir: Path | None = None
) -> dict[str, JobOutcome]:
    """Collect outcomes as tasks finish; report running jobs' progress from their records.

    A task that returns a shipment (no shared run folder) has its files written into
    ``run_dir`` here, by the driver.
    """
    import ray

    job_of = {ref: job for job, ref in refs.items()}
    outcomes: dict[str, JobOutcome] = {}
    pending = list(refs.values())
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=RAY_POLL_S)
        for ref in ready:
            job = job_of[ref]
            outcomes[job] = task_outcome(job, ref, run_dir)
            watcher.finished(outcomes[job])
        watcher.poll(job for job in refs if job not in outcomes)
    return {job: outcomes[job] for job in refs}


def task_outcome(job: str, ref: Any, run_dir: Path | None = None) -> JobOutcome:
    """The task's outcome; a task that died (worker crash, lost node) counts as failed."""
    import ray

    from gradience.experiment.shipping import Shipment, deliver

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return JobOutcome(job, "failed", f"{type(error).__name__}: {message}")
    if not isinstance(result, Shipment) or run_dir is None:
        return result
    try:
        return deliver(run_dir, result)
    except (OSError, GradienceError) as error:  # the job ran; its files could not be written
        return JobOutcome(job, "failed", f"writing its files into {run_dir}: {error}")


class RecordWatcher:
    """Turns ``job.json`` changes of Ray-run jobs into the events the local executor emits."""

    def __init__(self, ctx: plan.RunContext, sink: EventSink | None):
        self.ctx = ctx
        self.sink = sink
        self.running: set[str] = set()
        self.last_progress: dict[str, JobProgress | None] = {}
        # A record as it was before this run started is not news (e.g. a job about to be reused).
        self.before = {job: self._started_at(job) for job in plan.job_ids(ctx.cfg)}

    def _record(self, job: str) -> JobRecord | None:
        seed_part, name = job.split("/", 1)
        return read_record(
            plan.job_dir(self.ctx.run_dir, int(seed_part.removeprefix("seed_")), name)
        )

    def _started_at(self, job: str) -> str | None:
        record = self._record(job)
        return record.started_at if record else None

    def poll(self, jobs: Iterable[str]) -> None:
        if self.sink is None:
            return
        for job in jobs:
            record = self._record(job)
            if (
                record is None
                or record.status != "running"
                or record.started_at == self.before.get(job)
            ):
                continue
            if job not in self.running:
                self.running.add(job)
                emit(self.sink, job, "started", attempt=record.attempts)
            if record.progress is not None and record.progress != self.last_progress.get(job):
                self.last_progress[job] = record.progress
                emit(self.sink, job, "progress", **record.progress.model_dump())

    def finished(self, outcome: JobOutcome) -> None:
        self.running.discard(outcome.job)
        if outcome.status == "gated" and outcome.message:
            emit(self.sink, outcome.job, "message", text=outcome.message)
        emit(
            self.sink,
            outcome.job,
            "finished",
            status=outcome.status,
            message=outcome.message,
            exact_match=outcome.exact_match,
        )
