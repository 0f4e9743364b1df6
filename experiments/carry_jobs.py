#!/usr/bin/env python
"""Copy a run's finished jobs without their weights into a folder to commit, so that another
machine or a later session resumes the run from it.

    python experiments/carry_jobs.py experiments/smollm2_results experiments/jobs/smollm2
    gradience mechanism run --config CONFIG --reuse-jobs-from experiments/jobs/smollm2

A mechanism run on a 2-core machine can take longer than one working session, and its run
folder (adapters of tens of MB each) is not committed. This copies RUN's config.yaml and every
finished train+eval job folder (its record, train and eval results, predictions and the
probe's audit) into DEST, leaving out adapter weights and checkpoints: each weights file is
replaced by adapter/weights_removed.json with its sha256, which must equal the job record's
output digest. ``--reuse-jobs-from DEST`` then copies those jobs into the new run, where each
counts as finished when its inputs hash matches; the audits re-derive the ranks from the
copied audit.json. Run it again after more jobs finished: jobs already in DEST with the same
record are kept as they are, any other is replaced.
Exit code 2 for bad input (RUN not a run folder, DEST inside RUN).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradience.errors import GradienceError
from gradience.experiment.reuse import copy_without_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of 'gradience mechanism run'")
    parser.add_argument("dest", type=Path, help="the folder to copy the finished jobs into")
    args = parser.parse_args(argv)
    try:
        copied = copy_without_weights(args.run, args.dest)
    except GradienceError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    held = len(list(args.dest.glob("seed_*/*/job.json")))
    print(
        f"{len(copied)} finished jobs copied into {args.dest}, "
        f"which now holds {held} ({size / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
