#!/usr/bin/env python
"""Learning curves of a mechanism-test config: every variant's accuracy against training steps.

    python experiments/learning_curve.py experiments/configs/cpu_demo.yaml --steps 150,200,250,300

For each step count the config is run as it is, with train.max_steps set to it and the
warm-up kept at the same fraction of the run (each point is a complete run with its own
schedule, not a checkpoint of a longer one), into OUTPUT/steps_<n>/ (rerunning resumes).
Writes OUTPUT/learning_curve.json, learning_curve.md (the table: mean ± sd over seeds per
variant and step count) and learning_curve.png, and prints the table. A config's setting is
on its plateau for a variant when the next step count changes that variant's mean by less
than --flat (default 0.01); the table's last column says so for each step count.

Neighbouring points are separate runs, so one point-to-point move mixes the trend with the
runs' own noise. A second table fits each variant's trend instead: a least-squares line
through every seed's accuracy at every step count from --fit-from on, and the change it
predicts over --horizon more steps (default 10) with its 95% CI (scipy.stats.linregress,
t with n-2 degrees of freedom). "flat" there means the whole CI lies within ±--flat.
A third table asks whether the *comparison* depends on where the runs stop: per step count,
the mean ± sd over seeds of each variant's paired difference from --reference (default
per_layer; same seed, same items), and the least-squares trend of those differences over
every step count with its 95% CI per 100 steps ("moves with steps" when the CI excludes 0).
``--from-json FILE`` rebuilds the tables and the plot from a saved learning_curve.json
without running anything (the difference table needs its ``by_seed`` scores, which files
written before it existed lack: it is then left out, saying so).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from gradience.config import load_config
from gradience.experiment.pipeline import run_mechanism_test


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--steps", help="comma-separated step counts, e.g. 150,200,250")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    parser.add_argument(
        "--output", default="experiments/learning_curve", help="folder for the runs and files"
    )
    parser.add_argument("--flat", type=float, default=0.01, help="plateau tolerance (accuracy)")
    parser.add_argument(
        "--horizon", type=int, default=10, help="'a few more steps' for the trend table"
    )
    parser.add_argument(
        "--fit-from", type=int, default=0, help="fit the trend from this step count on"
    )
    parser.add_argument(
        "--reference", default="per_layer", help="the variant the difference table subtracts from"
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="rebuild the tables and plot from a saved learning_curve.json (runs nothing)",
    )
    args = parser.parse_args(argv)
    if args.from_json is None and args.steps is None:
        parser.error("--steps is required unless --from-json is given")
    return args


def run_point(cfg, steps: int, output: Path):
    point = cfg.model_copy(deep=True)
    fraction = cfg.train.warmup_steps / cfg.train.max_steps if cfg.train.max_steps else 0.0
    point.train.max_steps = steps
    point.train.warmup_steps = round(fraction * steps)
    return run_mechanism_test(point, output / f"steps_{steps}").results


def variant_names(points) -> list[str]:
    """Every variant of the given points, in the order they first appear."""
    return list(dict.fromkeys(v for point in points for v in point))


def curve_table(curve: dict[int, dict[str, list[float]]], flat: float) -> list[str]:
    steps = sorted(curve)
    variants = variant_names(curve.values())
    lines = [
        "| steps | "
        + " | ".join(f"`{v}`" for v in variants)
        + f" | on plateau (next point moves every mean < {flat:g}) |"
    ]
    lines.append("|" + "---|" * (len(variants) + 2))
    for i, n in enumerate(steps):
        cells = []
        for v in variants:
            values = curve[n].get(v, [])
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "—")
        plateau = "—"
        if i + 1 < len(steps):
            moves = {
                v: abs(statistics.mean(curve[steps[i + 1]][v]) - statistics.mean(curve[n][v]))
                for v in variants
                if curve[n].get(v) and curve[steps[i + 1]].get(v)
            }
            worst = max(moves, key=moves.get)
            plateau = (
                "yes" if moves[worst] < flat else "no"
            ) + f" (largest move {moves[worst]:.3f}, `{worst}`)"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {plateau} |")
    return lines


def linear_change(
    xs: list[int], ys: list[float], horizon: int
) -> tuple[float, float, float] | None:
    """The change a least-squares line through (xs, ys) predicts over ``horizon`` steps, with
    its 95% CI (scipy.stats.linregress, t with n-2 degrees of freedom); None with fewer than 2
    distinct xs or 3 points."""
    from scipy import stats

    if len(set(xs)) < 2 or len(xs) < 3:
        return None
    fit = stats.linregress(xs, ys)
    half = stats.t.ppf(0.975, len(xs) - 2) * fit.stderr * horizon
    change = fit.slope * horizon
    return change, change - half, change + half


def trend_table(
    curve: dict[int, dict[str, list[float]]], flat: float, horizon: int, fit_from: int
) -> list[str]:
    """Per variant: the least-squares trend over the points >= fit_from, as the change it
    predicts over ``horizon`` more steps, with a 95% CI."""
    steps = [n for n in sorted(curve) if n >= fit_from]
    variants = variant_names(curve[n] for n in steps)
    lines = [
        f"| variant | change over {horizon} more steps (trend over {steps[0]}-{steps[-1]} steps) "
        f"| 95% CI | flat (CI within ±{flat:g}) |",
        "|---|---|---|---|",
    ]
    for v in variants:
        xs = [n for n in steps for _ in curve[n].get(v, [])]
        ys = [y for n in steps for y in curve[n].get(v, [])]
        trend = linear_change(xs, ys, horizon)
        if trend is None:
            lines.append(f"| `{v}` | — | — | not computable (fewer than 2 step counts) |")
            continue
        change, low, high = trend
        verdict = "yes" if -flat < low and high < flat else "no"
        lines.append(f"| `{v}` | {change:+.4f} | [{low:+.4f}, {high:+.4f}] | {verdict} |")
    return lines


def difference_table(by_seed: dict[int, dict[str, dict[str, float]]], reference: str) -> list[str]:
    """Per step count, ``reference`` minus each other variant, paired by seed (mean ± sd over the
    seeds where both ran), and the trend of those differences over the step counts (per 100
    steps, 95% CI, :func:`linear_change`)."""
    steps = sorted(by_seed)
    others = [v for v in variant_names(by_seed.values()) if v != reference]
    if not any(reference in by_seed[n] for n in steps) or not others:
        return [f"(no paired differences: no `{reference}` or no other variant in the curve)"]

    def diffs(n: int, other: str) -> list[float]:
        ours, theirs = by_seed[n].get(reference, {}), by_seed[n].get(other, {})
        return [ours[s] - theirs[s] for s in ours if s in theirs]

    lines = ["| steps | " + " | ".join(f"`{reference}` − `{v}`" for v in others) + " |"]
    lines.append("|" + "---|" * (len(others) + 1))
    for n in steps:
        cells = []
        for v in others:
            d = diffs(n, v)
            sd = f" ± {statistics.stdev(d):.4f}" if len(d) > 1 else ""
            cells.append(f"{statistics.mean(d):+.4f}{sd} (n={len(d)})" if d else "—")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cells = []
    for v in others:
        xs = [n for n in steps for _ in diffs(n, v)]
        ys = [d for n in steps for d in diffs(n, v)]
        trend = linear_change(xs, ys, 100)
        if trend is None:
            cells.append("not computable (fewer than 2 step counts)")
            continue
        change, low, high = trend
        moves = "moves with steps" if low > 0 or high < 0 else "no trend"
        cells.append(f"{change:+.4f} [{low:+.4f}, {high:+.4f}], {moves}")
    lines.append("| trend per 100 steps [95% CI] | " + " | ".join(cells) + " |")
    return lines


def plot(curve: dict[int, dict[str, list[float]]], metric: str, chosen: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(curve)
    variants = variant_names(curve.values())
    # Left: the whole accuracy scale, where "flat" is judged by eye; right: zoomed to the
    # data, where every difference between variants shows (and looks larger than it is).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, title in zip(axes, ("full scale", "zoomed to the data"), strict=True):
        for v in variants:
            xs = [n for n in steps if curve[n].get(v)]
            means = [statistics.mean(curve[n][v]) for n in xs]
            sds = [statistics.stdev(curve[n][v]) if len(curve[n][v]) > 1 else 0.0 for n in xs]
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=v)
        ax.axvline(
            chosen, color="grey", linestyle="--", linewidth=1, label=f"config: {chosen} steps"
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training steps (each point a full run with its own schedule)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0.0, 1.0)
    axes[0].set_ylabel(f"{metric} (mean ± sd over seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    curve: dict[int, dict[str, list[float]]],
    by_seed: dict[int, dict[str, dict[str, float]]] | None,
    metric: str,
    chosen: int,
    output: Path,
    args,
) -> None:
    tables = [
        curve_table(curve, args.flat),
        trend_table(curve, args.flat, args.horizon, args.fit_from),
    ]
    if by_seed is None:
        tables.append(["(no paired differences: this learning_curve.json has no by_seed scores)"])
    else:
        tables.append(difference_table(by_seed, args.reference))
    text = "\n\n".join("\n".join(table) for table in tables)
    (output / "learning_curve.md").write_text(text + "\n")
    plot(curve, metric, chosen, output / "learning_curve.png")
    print(text)
    print(f"written: {output}/learning_curve.md, learning_curve.png")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        curve = {int(n): point for n, point in saved["curve"].items()}
        by_seed = saved.get("by_seed")
        if by_seed is not None:
            by_seed = {int(n): point for n, point in by_seed.items()}
        Path(args.output).mkdir(parents=True, exist_ok=True)
        write_outputs(curve, by_seed, saved["metric"], cfg.train.max_steps, Path(args.output), args)
        return 0
    if args.seeds:
        cfg.train.seeds = [int(s) for s in args.seeds.split(",")]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    metric = cfg.hypothesis.primary_metric
    curve: dict[int, dict[str, list[float]]] = {}
    by_seed: dict[int, dict[str, dict[str, float]]] = {}
    for steps in sorted({int(s) for s in args.steps.split(",")}):
        print(f"learning curve: {steps} steps", file=sys.stderr)
        results = run_point(cfg, steps, output)
        by_seed[steps] = {
            name: {seed: getattr(run, metric) for seed, run in aggregate.runs.items()}
            for name, aggregate in results.variants.items()
        }
        curve[steps] = {name: list(runs.values()) for name, runs in by_seed[steps].items()}
    (output / "learning_curve.json").write_text(
        json.dumps(
            {
                "config": args.config,
                "metric": metric,
                "seeds": cfg.train.seeds,
                "curve": curve,
                "by_seed": by_seed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {output}/learning_curve.json", file=sys.stderr)
    write_outputs(curve, by_seed, metric, cfg.train.max_steps, output, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
