"""Jobs in parallel on one machine: the local executor with ``env.workers`` > 1.

A seed's jobs depend on each other (probe -> audit -> variants) and, through the truncation
arm's cross-seed variants only, on the audit of the seed their ranks come from (a job is ready
once both audits have finished). The parent process keeps the seeds' DAGs and hands ready
jobs to ``env.workers`` worker processes, never more than one job per worker at a time, so
it can choose what runs next: audits first (they unlock a seed's variants), then probes,
trained variants, and evaluation-only truncations last (short jobs fill the end). Scheduling
jobs rather than whole seeds keeps both cores busy when the seeds do not divide evenly among
the workers. On a small CPU this is the faster use
of the cores: a 1 M-parameter model's matrices are too small for two threads to help much
(one LoRA step at batch 8 gains about 1.1x from a second thread), while two one-thread
processes do twice the work.

* Workers are spawned (never forked: torch and a live progress view do not survive a fork),
  import the training stack once, set ``env.num_threads`` threads (or the machine's cores
  divided among the workers) and keep one base-model cache each for the whole run.
* Every job is the very function the one-process executor calls; job events travel back
  through a queue and the parent hands them to the progress view from its main thread.
  A seed's bench is written by the parent once its last job has finished.
* Results do not depend on the number of workers: every job seeds its own generators and
  writes only its own folder (tested against a one-process run).
* Ctrl-C: the parent terminates the workers (a running job's record stays ``running``, so
  the next run restarts it, exactly as in one process) and re-raises.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import os
import queue as queue_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.jobs import EventSink, JobEvent, JobOutcome

if TYPE_CHECKING:
    from gradience.tasks import TaskData

#: How long the parent waits for an event before looking at the seeds again (seconds).
POLL_S = 0.2


def worker_threads(num_threads: int | None, workers: int, cores: int | None = None) -> int:
    """torch threads per worker: ``env.num_threads``, else the cores shared out (at least 1)."""
    if num_threads is not None:
        return num_threads
    return max(1, (cores or os.cpu_count() or 1) // workers)


@dataclass
class _Workers:
    """A pool of spawned workers, its event queue and what the workers were started with."""

    pool: Any
    events: Any
    key: tuple[object, ...]

    def close(self, terminate: bool = False) -> None:
        if terminate:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


#: The pool kept across runs inside :func:`shared_workers` (None: none kept).
_SHARED: dict[str, Any] = {"keep": False, "workers": None}


@contextlib.contextmanager
def shared_workers() -> Iterator[None]:
    """Keep the worker processes between the runs made inside (the sequential loop's steps).

    A step that spawned its own workers would import the training stack and load the base
    model in each of them again (~5 s a step on 2 cores); jobs carry their own RunContext, so
    workers started for the first step serve the next ones (a step whose training identity,
    task, run folder or worker count differs gets fresh workers).
    """
    _SHARED["keep"] = True
    try:
        yield
    finally:
        _SHARED["keep"] = False
        held, _SHARED["workers"] = _SHARED["workers"], None
        if held is not None:
            held.close()


def _workers_for(ctx: plan.RunContext, task_data: TaskData, workers: int) -> _Workers:
    threads = worker_threads(ctx.cfg.env.num_threads, workers)
    key = (workers, threads, ctx.identity, ctx.cfg.task.model_dump_json(), str(ctx.run_dir))
    held = _SHARED["workers"]
    if held is not None and held.key == key:
        return held
    if held is not None:
        held.close()
        _SHARED["workers"] = None
    spawn = multiprocessing.get_context("spawn")
    events = spawn.Queue()
    pool = spawn.Pool(
        workers, initializer=_start_worker, initargs=(events, threads, ctx, task_data)
    )
    started = _Workers(pool, events, key)
    if _SHARED["keep"]:
        _SHARED["workers"] = started
    return started


def run_seeds_in_workers(
    ctx: plan.RunContext, task_data: TaskData, sink: EventSink | None = None
) -> dict[str, JobOutcome]:
    """Every job of every seed, at most ``env.workers`` at a time; returns every outcome."""
    from gradience.experiment.aggregate import write_seed_bench

    env = ctx.cfg.env
    check_cpu_only(ctx.cfg)
    seeds = list(ctx.cfg.train.seeds)
    variants = plan.trained_variants(ctx.cfg)[1:]
    workers = min(env.workers, len(seeds) * (len(variants) + 1))
    held = _workers_for(ctx, task_data, workers)
    pool, events = held.pool, held.events
    ready: list[Job] = [
        Job(PROBE_PRIORITY, order, "probe", seed) for order, seed in enumerate(seeds)
    ]
    running: dict[Any, Job] = {}
    left = {seed: len(variants) + 2 for seed in seeds}  # probe, audit, variants
    outcomes: dict[str, JobOutcome] = {}
    audits: dict[int, JobOutcome] = {}
    try:
        while ready or running:
            ready.sort()
            while ready and len(running) < workers:
                job = ready.pop(0)
                args = (job.kind, job.seed, job.variant, job.upstream, job.source, ctx)
                running[pool.apply_async(_run_job, args)] = job
            _forward_events(events, sink, timeout=POLL_S)
            for result in [r for r in running if r.ready()]:
                job = running.pop(result)
                outcome = result.get()  # a worker's own crash is re-raised here
                outcomes[outcome.job] = outcome
                ready += _unlocked(ctx.cfg, job, outcome, variants, audits)
                left[job.seed] -= 1
                if left[job.seed] <= 0:
                    write_seed_bench(ctx, job.seed)
        _forward_events(events, sink, timeout=0)
        if _SHARED["workers"] is not held:
            held.close()
            _forward_events(events, sink, timeout=0)
        return outcomes
    except BaseException:
        if _SHARED["workers"] is held:
            _SHARED["workers"] = None
        held.close(terminate=True)  # Ctrl-C or a crash: no worker outlives the run
        raise


def check_cpu_only(cfg: Any) -> None:
    """Worker processes share this machine's cores; on CUDA they would share one GPU."""
    import torch

    if cfg.env.device == "cuda" or (cfg.env.device == "auto" and torch.cuda.is_available()):
        raise GradienceError(
            "env.workers > 1 runs jobs side by side on this machine's CPU cores; on CUDA "
            "every worker would share one GPU. Use env.executor: ray (one GPU per job) or "
            "env.workers: 1",
            field="env.workers",
        )


#: Dispatch order among ready jobs (lower first); ties go to the earlier seed.
AUDIT_PRIORITY, PROBE_PRIORITY, VARIANT_PRIORITY, TRUNCATED_PRIORITY = range(4)


@dataclass(order=True)
class Job:
    priority: int
    order: int
    kind: str = field(compare=False)
    seed: int = field(compare=False)
    variant: str | None = field(default=None, compare=False)
    upstream: JobOutcome | None = field(default=None, compare=False)
    #: A cross-seed variant's second upstream: the audit of the seed its ranks come from.
    source: JobOutcome | None = field(default=None, compare=False)


def _unlocked(
    cfg: Any, job: Job, outcome: JobOutcome, variants: list[str], audits: dict[int, JobOutcome]
) -> list[Job]:
    """The jobs that ``job`` finishing makes ready: a probe's audit, an audit's variants.

    ``audits`` (updated here) holds every finished audit: a cross-seed variant is ready when
    the later of its two audits (its seed's, its rank source's) finishes, so exactly once.
    A failed or gated upstream still hands its outcome down: the downstream job records
    itself as skipped, exactly as in one process."""
    if job.kind == "probe":
        return [Job(AUDIT_PRIORITY, job.order, "audit", job.seed, upstream=outcome)]
    if job.kind != "audit":
        return []
    audits[job.seed] = outcome
    seeds = list(cfg.train.seeds)
    jobs = [
        _variant(job.order, job.seed, variant, outcome)
        for variant in variants
        if variant not in plan.CROSS_SEED
    ]
    for seed in seeds:
        for variant in (v for v in variants if v in plan.CROSS_SEED):
            source = plan.rank_source_seed(cfg, seed, variant)
            if job.seed in (seed, source) and seed in audits and source in audits:
                jobs.append(
                    _variant(seeds.index(seed), seed, variant, audits[seed], audits[source])
                )
    return jobs


def _variant(
    order: int, seed: int, variant: str, audit: JobOutcome, source: JobOutcome | None = None
) -> Job:
    priority = TRUNCATED_PRIORITY if variant in plan.TRUNCATED else VARIANT_PRIORITY
    return Job(priority, order, "variant", seed, variant, audit, source)


def _forward_events(events: Any, sink: EventSink | None, timeout: float) -> None:
    """Hand every queued event to ``sink``; wait up to ``timeout`` for the first one."""
    block = timeout > 0
    while True:
        try:
            event = events.get(block, timeout) if block else events.get_nowait()
        except queue_module.Empty:
            return
        block = False
        if sink is not None:
            sink(event)


_WORKER: dict[str, Any] = {}


def _start_worker(events: Any, threads: int, ctx: plan.RunContext, task_data: TaskData) -> None:
    import contextlib
    import gc
    import signal

    import torch

    from gradience.models.reuse import reuse_base_model, reusing_base_model
    from gradience.train import run as _training  # noqa: F401 - import the stack once, up front

    torch.set_num_threads(threads)
    # The parent decides what Ctrl-C does (it terminates the pool); a worker that also got
    # the terminal's SIGINT would only print a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stack = contextlib.ExitStack()  # lives as long as the worker: one base model per worker
    stack.enter_context(reusing_base_model(reuse_base_model(ctx.cfg, "local")))
    _WORKER.update(events=events, ctx=ctx, task_data=task_data, stack=stack)
    # Closed while the worker exits normally (not left to interpreter teardown).
    multiprocessing.util.Finalize(None, stack.close, exitpriority=10)
    gc.freeze()  # the imported libraries are never garbage: keep full collections cheap


def _send(event: JobEvent) -> None:
    _WORKER["events"].put(event)


def _run_job(
    kind: str,
    seed: int,
    variant: str | None,
    upstream: JobOutcome | None,
    source: JobOutcome | None = None,
    ctx: plan.RunContext | None = None,
) -> JobOutcome:
    from gradience.experiment.audit_job import audit_job
    from gradience.experiment.jobs import probe_job, variant_job

    ctx = ctx or _WORKER["ctx"]  # the job's own run (its seeds) when the workers are shared
    task_data = _WORKER["task_data"]
    if kind == "probe":
        return probe_job(ctx, seed, task_data, _send)
    if kind == "audit":
        assert upstream is not None
        return audit_job(ctx, seed, upstream, _send)
    assert variant is not None and upstream is not None
    return variant_job(ctx, seed, variant, upstream, task_data, _send, source)
