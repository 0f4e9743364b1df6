"""The mechanism test: probe -> audit -> variants -> eval over several seeds, resumable, local or on Ray.

Public API: :func:`run_mechanism_test` (run or resume a whole experiment),
:func:`run_until_decided` (the same, adding seeds until the sequential rule stops) and
:func:`load_run` / :func:`job_table` (read a run folder, as ``gradience mechanism status`` does).
Modules, in the order data flows: ``plan`` (jobs and folders), ``variants`` (rank patterns),
``jobs`` (what each job does), ``executors`` (local, Ray), ``aggregate`` (bench.json,
aggregated_results.json), ``pipeline`` (all of it, in order), ``sequential`` (seeds added
until decided), ``progress`` (live view).
"""

from gradience.experiment.jobs import JobEvent, JobOutcome
from gradience.experiment.pipeline import MechanismRun, run_mechanism_test
from gradience.experiment.sequential import run_until_decided
from gradience.experiment.status import JobRow, job_table, load_run

__all__ = [
    "JobEvent",
    "JobOutcome",
    "JobRow",
    "MechanismRun",
    "job_table",
    "load_run",
    "run_mechanism_test",
    "run_until_decided",
]
