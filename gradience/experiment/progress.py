"""Live progress of a run: a rich view on a terminal, plain timestamped lines otherwise.

Both consume the :class:`~gradience.experiment.jobs.JobEvent` stream of either executor and
show jobs done / running / failed and, for each running job, its phase, step and loss.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO

from gradience.experiment.jobs import JobEvent

FINISHED = ("done", "reused", "failed", "skipped", "gated")


class JobBoard:
    """Every job's latest status and progress, fed by events."""

    def __init__(self, jobs: list[str]):
        self.status = {job: "pending" for job in jobs}
        self.progress: dict[str, dict[str, Any]] = {}

    def update(self, event: JobEvent) -> None:
        if event.kind == "started":
            self.status[event.job] = "running"
        elif event.kind == "progress":
            self.status[event.job] = "running"
            self.progress[event.job] = dict(event.data)
        elif event.kind == "finished":
            self.status[event.job] = str(event.data.get("status", "done"))
            self.progress.pop(event.job, None)

    def counts(self) -> Counter:
        return Counter(self.status.values())

    def summary(self) -> str:
        c = self.counts()
        finished = sum(c[s] for s in FINISHED)
        parts = [f"{finished}/{len(self.status)} jobs finished", f"{c['running']} running"]
        parts += [f"{c[s]} {s}" for s in ("done", "reused", "failed", "skipped", "gated") if c[s]]
        return " · ".join(parts)


def describe_progress(data: dict[str, Any]) -> str:
    text = f"{data.get('phase', '')} {data.get('step')}/{data.get('max_steps')}"
    loss = data.get("loss")
    return text + (f" loss {loss:.4f}" if isinstance(loss, float) else "")


def describe_finish(event: JobEvent) -> str:
    status = event.data.get("status")
    text = f"{event.job}: {status}"
    if event.data.get("exact_match") is not None:
        text += f" (exact_match {event.data['exact_match']:.3f})"
    if event.data.get("message") and status not in ("done", "reused"):
        text += f": {event.data['message']}"
    return text


class PlainProgress:
    """Timestamped lines; a running job's progress at most every ``every_s`` seconds.

    Nothing is printed before the first event, so a run refused up front (a bad run folder,
    unreadable data) shows its one error line and nothing else.
    """

    def __init__(self, jobs: list[str], stream: TextIO | None = None, every_s: float = 10.0):
        self.board = JobBoard(jobs)
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.last_line: dict[str, float] = {}
        self.started = False

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.line(self.board.summary())

    def line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def __call__(self, event: JobEvent) -> None:
        if not self.started:
            self.started = True
            self.line(f"{len(self.board.status)} jobs planned")
        self.board.update(event)
        if event.kind == "started":
            self.line(f"{event.job}: started (attempt {event.data.get('attempt', 1)})")
        elif event.kind == "progress":
            now = time.monotonic()
            last_step = event.data.get("step") == event.data.get("max_steps")
            if last_step or now - self.last_line.get(event.job, 0.0) >= self.every_s:
                self.last_line[event.job] = now
                self.line(f"{event.job}: {describe_progress(dict(event.data))}")
        elif event.kind == "message":
            self.line(str(event.data.get("text")))
        elif event.kind == "finished":
            self.line(f"{describe_finish(event)} — {self.board.summary()}")


class RichProgress:
    """A live panel: the job counts and a table of running jobs; finished jobs scroll above.

    The panel appears with the first event (see :class:`PlainProgress`).
    """

    def __init__(self, jobs: list[str], console: Any = None):
        from rich.console import Console
        from rich.live import Live

        self.board = JobBoard(jobs)
        self.console = console or Console(stderr=True)
        self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="bold")
        for column in ("running job", "phase", "step", "loss"):
            table.add_column(column)
        for job, status in self.board.status.items():
            if status != "running":
                continue
            data = self.board.progress.get(job, {})
            loss = data.get("loss")
            step = f"{data['step']}/{data['max_steps']}" if data.get("step") is not None else ""
            table.add_row(
                job,
                str(data.get("phase", "")),
                step,
                f"{loss:.4f}" if isinstance(loss, float) else "",
            )
        return Group(self.board.summary(), table)

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live.is_started:
            self.live.update(self.render())
            self.live.stop()

    def __call__(self, event: JobEvent) -> None:
        from rich.text import Text  # plain Text: error messages may contain [brackets]

        if not self.live.is_started:
            self.live.start()
        self.board.update(event)
        if event.kind == "message":
            self.console.print(Text(str(event.data.get("text")), style="yellow"))
        elif event.kind == "finished":
            status = str(event.data.get("status"))
            style = {"failed": "red", "gated": "yellow", "skipped": "yellow"}.get(status, "green")
            self.console.print(Text(describe_finish(event), style=style))
        self.live.update(self.render())


def progress_view(jobs: list[str], *, stream: TextIO | None = None) -> PlainProgress | RichProgress:
    """Rich on a terminal, plain lines otherwise (logs, CI, Ray's redirected output)."""
    stream = stream or sys.stderr
    return RichProgress(jobs) if stream.isatty() else PlainProgress(jobs, stream)
