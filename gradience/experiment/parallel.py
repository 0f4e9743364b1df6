"""Seeds in parallel on one machine: the local executor with ``env.workers`` > 1.

A seed's jobs depend on each other (probe -> audit -> variants) but seeds do not, so each
worker process runs whole seeds with :func:`~gradience.experiment.executors.run_seed`, the
very function the one-process executor calls. On a small CPU this is the faster use of the
cores: a 1 M-parameter model's matrices are too small for two threads to help much (one LoRA
step at batch 8 gains about 1.1x from a second thread), while two one-thread processes do
twice the work.

* Workers are spawned (never forked: torch and a live progress view do not survive a fork)
  and each sets ``env.num_threads`` threads, or the machine's cores divided among the
  workers. Each keeps its own base-model cache for the seed it runs.
* Job events travel back through a queue; the parent hands them to the progress view from
  its main thread, so the view sees the same events as with one process.
* Results do not depend on the number of workers: every job seeds its own generators and
  writes only its own folder (tested against a one-process run).
* Ctrl-C: the parent terminates the workers (a running job's record stays ``running``, so
  the next run restarts it, exactly as in one process) and re-raises.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
from typing import TYPE_CHECKING, Any

from gradience.experiment import plan
from gradience.experiment.jobs import EventSink, JobEvent, JobOutcome

if TYPE_CHECKING:
    from gradience.tasks import TaskData

#: How long the parent waits for an event before looking at the seeds again (seconds).
POLL_S = 0.2
_EVENTS: Any = None  # the worker's end of the event queue (set by _start_worker)


def worker_threads(num_threads: int | None, workers: int, cores: int | None = None) -> int:
    """torch threads per worker: ``env.num_threads``, else the cores shared out (at least 1)."""
    if num_threads is not None:
        return num_threads
    return max(1, (cores or os.cpu_count() or 1) // workers)


def run_seeds_in_workers(
    ctx: plan.RunContext, task_data: TaskData, sink: EventSink | None = None
) -> dict[str, JobOutcome]:
    """Every seed of the run, ``env.workers`` at a time; returns every job's outcome."""
    env = ctx.cfg.env
    seeds = list(ctx.cfg.train.seeds)
    workers = min(env.workers, len(seeds))
    spawn = multiprocessing.get_context("spawn")
    events = spawn.Queue()
    pool = spawn.Pool(
        workers,
        initializer=_start_worker,
        initargs=(events, worker_threads(env.num_threads, workers)),
        maxtasksperchild=None,
    )
    try:
        pending = [pool.apply_async(_seed_in_worker, (ctx, seed, task_data)) for seed in seeds]
        outcomes: dict[str, JobOutcome] = {}
        while pending:
            _forward_events(events, sink, timeout=POLL_S)
            for result in [r for r in pending if r.ready()]:
                pending.remove(result)
                outcomes.update(result.get())  # a worker's own crash is re-raised here
        _forward_events(events, sink, timeout=0)
        pool.close()
        pool.join()
        _forward_events(events, sink, timeout=0)
        return outcomes
    except BaseException:
        pool.terminate()  # Ctrl-C or a crash: no worker outlives the run
        pool.join()
        raise


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


def _start_worker(events: Any, threads: int) -> None:
    import signal

    import torch

    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(threads)
    # The parent decides what Ctrl-C does (it terminates the pool); a worker that also got
    # the terminal's SIGINT would only print a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _send(event: JobEvent) -> None:
    _EVENTS.put(event)


def _seed_in_worker(ctx: plan.RunContext, seed: int, task_data: TaskData) -> dict[str, JobOutcome]:
    from gradience.experiment.executors import run_seed
    from gradience.models.reuse import reuse_base_model, reusing_base_model

    with reusing_base_model(reuse_base_model(ctx.cfg, "local")):
        return run_seed(ctx, seed, task_data, _send)
