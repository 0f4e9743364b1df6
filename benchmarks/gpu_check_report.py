"""Assemble ``gpu_check.sh``'s steps into one OUT.json and a table; exit 1 if any step missed.

For each step the shell leaves, in its working folder: ``NAME.status`` (exit code, wall
seconds, limit, whether it was selected), ``NAME.log`` (its output) and, written by the step
itself as it went, ``NAME.json`` (:mod:`step_io`). A step's entry in OUT.json::

    {"status": "ok|failed|timeout|skipped", "reason": str | None, "limit_s", "wall_s",
     "exit_code", "last_line", "numbers": {...} | None}

``timeout`` whenever the exit code says the limit ended it (124, or 137 after the KILL that
follows), whatever the step managed to write; ``failed`` when it exited non-zero, wrote no
final status, or wrote none at all. Standard library only: it must run where the steps
could not.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

TIMEOUT_CODES = (124, 137)
META_KEYS = ("step", "status", "reason")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-500:] if lines else ""


def step_entry(folder: Path, name: str) -> dict[str, Any]:
    """One step's record (module docstring)."""
    info = read_json(folder / f"{name}.status") or {}
    written = read_json(folder / f"{name}.json")
    numbers = {k: v for k, v in written.items() if k not in META_KEYS} if written else None
    entry: dict[str, Any] = {
        "status": "failed",
        "reason": None,
        "limit_s": info.get("limit_s"),
        "wall_s": info.get("wall_s"),
        "exit_code": info.get("exit_code"),
        "last_line": last_line(folder / f"{name}.log"),
        "numbers": numbers,
    }
    code = info.get("exit_code")
    said = (written or {}).get("status")
    if not info.get("selected", True):
        entry.update(status="skipped", reason=info.get("reason") or "not selected")
    elif code is None:
        entry["reason"] = "the step did not run (no status file)"
    elif code in TIMEOUT_CODES:
        entry.update(
            status="timeout",
            reason=f"ran past its limit of {info.get('limit_s')} s"
            + ("" if written else "; it wrote no numbers"),
        )
    elif written is None:
        entry["reason"] = f"wrote no JSON (exit code {code}): {entry['last_line']}"
    elif code == 0 and said in ("ok", "skipped"):
        entry.update(status=said, reason=written.get("reason"))
    elif said == "failed":
        entry["reason"] = written.get("reason") or entry["last_line"]
    else:
        entry["reason"] = f"exit code {code} with status {said!r}: {entry['last_line']}"
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the steps' working folder")
    parser.add_argument("out", type=Path, help="OUT.json")
    parser.add_argument("steps", nargs="+", help="step names, in order")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--wall-s", type=float, help="the whole check's wall time")
    args = parser.parse_args()

    steps = {name: step_entry(args.folder, name) for name in args.steps}
    devices = {(s["numbers"] or {}).get("device") for s in steps.values()} - {None}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": sys.executable,
        "smoke": args.smoke,
        "device": ", ".join(sorted(devices)) or None,
        "limits_total_s": sum(s["limit_s"] or 0 for s in steps.values()),
        "wall_s": args.wall_s,
        "passed": all(s["status"] in ("ok", "skipped") for s in steps.values()),
        "steps": steps,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"{'step':<16}{'status':<9}{'wall':>6}{'limit':>7}  reason / last line")
    for name, s in steps.items():
        wall = f"{s['wall_s']}s" if s["wall_s"] is not None else "-"
        limit = f"{s['limit_s']}s" if s["limit_s"] is not None else "-"
        note = s["reason"] or s["last_line"]
        print(f"{name:<16}{s['status']:<9}{wall:>6}{limit:>7}  {note[:160]}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
