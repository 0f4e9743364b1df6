#!/usr/bin/env python
"""Statistical analysis of a mechanism-test run, as the experiment README documents it:

    python experiments/analyze_mechanism_test.py experiments/mechanism_test_results/aggregated_results.json

Prints the summary and writes mechanism_analysis.json, report.md and the figures next to the
results. The same code as ``gradience mechanism analyze`` (which has more options).
"""

from __future__ import annotations

import sys

from gradience.cli import main

if __name__ == "__main__":
    sys.exit(main(["mechanism", "analyze", *sys.argv[1:]]))
