"""Sequential seeds: the error rates and seeds used of ``gradience.stats.sequential``, by
simulation of the CPU demo's two primary contrasts (issue 18, item 4).

**The simulated experiment.** Per seed s, three variants' scores share a seed effect
u_s ~ N(0, 0.009) (the run-to-run level every variant of a seed shares, which cancels in the
paired differences but enters Cohen's d) plus each variant's own noise:

    per_layer = 0.64 + u_s + e_pl,   probe = 0.64 − δ_E + u_s + e_pr,   shuffle = 0.64 − δ_M + u_s + e_sh

with sd(e_pl) = sd(e_sh) = 0.011/√2 and sd(e_pr) = √(0.017² − sd(e_pl)²), so the paired
differences have the demo's sds: efficacy per_layer − probe 0.017, placement per_layer −
shuffle 0.011 (the two contrasts share per_layer's noise, correlation ≈ 0.32, as in a real
run). Thresholds: efficacy τ_E = 0.02 with Cohen's d > 0.5, placement τ_M = 0.01; α = 0.05
family-wise over m = 2, so each contrast's one-sided level is a = 0.025.

**Scenarios** (each ``--datasets`` simulated runs of n_max seeds; the sequential rule reads
their prefixes, the fixed-sample rule all n_max seeds):

* null:        δ_E = δ_M = 0. A PASS is an error: the family-wise PASS rate must be ≤ α.
* thresholds:  δ_E = 0.02, δ_M = 0.01. A FAIL is an error: the family-wise FAIL rate ≤ α.
* alternative: δ_E = 0.04, δ_M = 0.02. The PASS rates are the power.
* below:       δ_E = 0.015, δ_M = 0.0075 (3/4 of each threshold). Neither PASS nor FAIL is an
               error the rule bounds (PASS claims only δ > 0; the threshold enters through the
               point estimate, the seed's rule), but the PASS rate shows how often a benefit
               below the threshold passes on its point estimate: more often with many looks,
               each a new chance for the estimate to land above τ.

**Rules compared.** ``sequential``: looks at n = 3..n_max, O'Brien-Fleming-type spending at
α/2 per contrast (``design_boundaries``), PASS / FAIL as in ``gradience.stats.sequential``,
stop when both are decided. ``fixed``: the verdict's fixed-sample rule at n_max seeds (PASS:
Holm-adjusted one-sided paired t p < α, mean > τ, and d > 0.5 for efficacy; FAIL: one-sided
p of H0 δ ≥ τ below α/2, i.e. the upper bound at α/m below τ). Both are computed here with
numpy over all data sets at once; the sequential decisions of the first ``--check`` data
sets of every (design, scenario) are recomputed with ``run_sequential`` itself and must agree
exactly (outcomes and seeds used), so the table measures the library's rule.

A second table, "the boundary alone", gives the rate at which the one-sided t p-value crosses
the look's level at any look from 3 to n_max with no other condition and no stopping: the
bound on each contrast's error that the spending is designed to hold at a, for PASS (vs 0,
when δ = 0) and FAIL (vs τ, when δ = τ), family-wise in the last column. It compares the
levels the library uses (``nominal_p``: the spending calibrated on the t process) with the
significance-level approach (``normal_p``: the canonical normal boundaries mapped through the
t p-value), which exceeds a: the reason for the calibration (see the module docstring of
``gradience.stats.sequential``).

Exit status 1 when the sequential family-wise PASS rate under the null or FAIL rate at the
thresholds exceeds 0.06, or when the vectorised decisions disagree with ``run_sequential``.
The last line is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
from scipy import stats

from gradience.stats.sequential import run_sequential
from gradience.stats.spending import design_boundaries

ALPHA = 0.05
M = 2
N_MIN = 3
DESIGNS = (15, 20)
SD_E, SD_M = 0.017, 0.011
SEED_SD = 0.009
TAU = {"efficacy": 0.02, "placement": 0.01}
MIN_D = {"efficacy": 0.5, "placement": None}
SCENARIOS = {
    "null": {"efficacy": 0.0, "placement": 0.0},
    "thresholds": {"efficacy": 0.02, "placement": 0.01},
    "alternative": {"efficacy": 0.04, "placement": 0.02},
    "below": {"efficacy": 0.015, "placement": 0.0075},
}
LIMIT = 0.06
OPEN, PASS, FAIL = 0, 1, 2


def simulate(
    n_sets: int, n_seeds: int, delta: dict[str, float], rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(values of A, values of B) per contrast, each of shape (data sets, seeds)."""
    sd_pl = SD_M / math.sqrt(2)
    sd_pr = math.sqrt(SD_E**2 - sd_pl**2)
    seed = rng.normal(0.0, SEED_SD, (n_sets, n_seeds))
    per_layer = 0.64 + seed + rng.normal(0.0, sd_pl, (n_sets, n_seeds))
    probe = 0.64 - delta["efficacy"] + seed + rng.normal(0.0, sd_pr, (n_sets, n_seeds))
    shuffle = 0.64 - delta["placement"] + seed + rng.normal(0.0, sd_pl, (n_sets, n_seeds))
    return {"efficacy": (per_layer, probe), "placement": (per_layer, shuffle)}


def statistics(a: np.ndarray, b: np.ndarray, n: int, tau: float) -> dict[str, np.ndarray]:
    """The look's statistics over the first ``n`` seeds of every data set."""
    a, b = a[:, :n], b[:, :n]
    diff = a - b
    mean = diff.mean(axis=1)
    se = diff.std(axis=1, ddof=1) / math.sqrt(n)
    pooled = np.sqrt((a.var(axis=1, ddof=1) + b.var(axis=1, ddof=1)) / 2)
    return {
        "mean": mean,
        "p_pass": stats.t.sf(mean / se, n - 1),
        "p_fail": stats.t.cdf((mean - tau) / se, n - 1),
        "d": (a.mean(axis=1) - b.mean(axis=1)) / pooled,
    }


def sequential(data: dict, n_max: int, levels: str = "nominal_p") -> dict[str, np.ndarray]:
    """Outcome, look of decision and crossing flags per contrast, vectorised over data sets;
    ``levels``: the boundary's ``nominal_p`` (what the library uses) or ``normal_p``."""
    boundary = design_boundaries(ALPHA, M, N_MIN, n_max)
    out: dict[str, np.ndarray] = {}
    for name, (a, b) in data.items():
        codes, cross_pass, cross_fail = [], [], []
        for n, level in zip(boundary.looks, getattr(boundary, levels), strict=True):
            s = statistics(a, b, n, TAU[name])
            d_ok = s["d"] > MIN_D[name] if MIN_D[name] is not None else True
            passes = (s["p_pass"] <= level) & (s["mean"] > TAU[name]) & d_ok
            fails = s["p_fail"] <= level
            codes.append(np.where(passes, PASS, np.where(fails, FAIL, OPEN)))
            cross_pass.append(s["p_pass"] <= level)
            cross_fail.append(fails)
        codes_arr = np.stack(codes, axis=1)
        decided = codes_arr != OPEN
        first = np.where(decided.any(axis=1), decided.argmax(axis=1), -1)
        rows = np.arange(codes_arr.shape[0])
        out[name] = np.where(first >= 0, codes_arr[rows, first], OPEN)
        out[f"{name}_at"] = np.where(first >= 0, np.asarray(boundary.looks)[first], n_max)
        out[f"{name}_cross_pass"] = np.stack(cross_pass, axis=1).any(axis=1)
        out[f"{name}_cross_fail"] = np.stack(cross_fail, axis=1).any(axis=1)
    out["seeds"] = np.maximum(out["efficacy_at"], out["placement_at"])
    return out


def fixed(data: dict, n_max: int) -> dict[str, np.ndarray]:
    """The fixed-sample verdict at n_max seeds (Holm over the two contrasts)."""
    s = {name: statistics(a, b, n_max, TAU[name]) for name, (a, b) in data.items()}
    p = np.stack([s["efficacy"]["p_pass"], s["placement"]["p_pass"]], axis=1)
    low = np.minimum(1.0, M * p.min(axis=1))
    high = np.maximum(low, p.max(axis=1))
    holm = np.where(p == p.min(axis=1, keepdims=True), low[:, None], high[:, None])
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(("efficacy", "placement")):
        d_ok = s[name]["d"] > MIN_D[name] if MIN_D[name] is not None else True
        passes = (holm[:, j] < ALPHA) & (s[name]["mean"] > TAU[name]) & d_ok
        fails = s[name]["p_fail"] < ALPHA / M
        out[name] = np.where(fails, FAIL, np.where(passes, PASS, OPEN))
    out["seeds"] = np.full(p.shape[0], n_max)
    return out


def rates(result: dict[str, np.ndarray]) -> dict[str, float]:
    e, m = result["efficacy"], result["placement"]
    return {
        "efficacy_pass": float(np.mean(e == PASS)),
        "efficacy_fail": float(np.mean(e == FAIL)),
        "placement_pass": float(np.mean(m == PASS)),
        "placement_fail": float(np.mean(m == FAIL)),
        "any_pass": float(np.mean((e == PASS) | (m == PASS))),
        "any_fail": float(np.mean((e == FAIL) | (m == FAIL))),
        "undetermined": float(np.mean((e == OPEN) | (m == OPEN))),
        "seeds_mean": float(np.mean(result["seeds"])),
        "seeds_p90": float(np.percentile(result["seeds"], 90)),
    }


def cross_check(data: dict, seq: dict, n_max: int, count: int) -> int:
    """Data sets among the first ``count`` where run_sequential disagrees with the vector code."""
    codes = {"pass": PASS, "fail": FAIL, "undetermined": OPEN}
    mismatches = 0
    for i in range(min(count, len(seq["seeds"]))):
        pairs = {name: (a[i], b[i]) for name, (a, b) in data.items()}
        result = run_sequential(pairs, TAU, ALPHA, N_MIN, n_max, MIN_D)
        same = result.n_seeds == seq["seeds"][i] and all(
            codes[result.outcomes[name].value] == seq[name][i] for name in data
        )
        mismatches += not same
    return mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=20_000, help="simulated runs per cell")
    parser.add_argument("--check", type=int, default=100, help="data sets re-run by the library")
    parser.add_argument("--json", help="write every rate here")
    args = parser.parse_args()
    if args.datasets < 1:
        parser.error("--datasets must be positive")
    started = time.perf_counter()

    rows, boundary_rows, report = [], [], {"alpha": ALPHA, "datasets": args.datasets}
    mismatches = 0
    for d_index, n_max in enumerate(DESIGNS):
        boundary = design_boundaries(ALPHA, M, N_MIN, n_max)
        report[f"boundary_n_max_{n_max}"] = {
            "looks": boundary.looks,
            "nominal_p": boundary.nominal_p,
            "z": boundary.z,
            "spent": boundary.spent,
        }
        for s_index, (scenario, delta) in enumerate(SCENARIOS.items()):
            rng = np.random.default_rng(18_000 + 100 * d_index + s_index)
            data = simulate(args.datasets, n_max, delta, rng)
            seq, fix = sequential(data, n_max), fixed(data, n_max)
            mismatches += cross_check(data, seq, n_max, args.check)
            for rule, result in (("sequential", seq), ("fixed", fix)):
                r = rates(result)
                report[f"{n_max}/{scenario}/{rule}"] = r
                rows.append((n_max, scenario, delta, rule, r))
            if scenario in ("null", "thresholds"):
                side = "pass" if scenario == "null" else "fail"
                for levels in ("nominal_p", "normal_p"):
                    res = seq if levels == "nominal_p" else sequential(data, n_max, levels)
                    e, m = res[f"efficacy_cross_{side}"], res[f"placement_cross_{side}"]
                    row = {
                        "efficacy": float(np.mean(e)),
                        "placement": float(np.mean(m)),
                        "either": float(np.mean(e | m)),
                    }
                    boundary_rows.append((n_max, scenario, levels, row))
                    report[f"{n_max}/{scenario}/boundary_alone/{levels}"] = row
    report["crosscheck_mismatches"] = mismatches

    se = math.sqrt(ALPHA * (1 - ALPHA) / args.datasets)
    print(
        f"{args.datasets} simulated runs per row; α = {ALPHA} family-wise over m = {M} "
        f"(a = {ALPHA / M} per contrast); Monte-Carlo se of a rate near {ALPHA}: {se:.4f}\n"
    )
    print(
        "| n_max | scenario (true δ_E, δ_M) | rule | E PASS | E FAIL | M PASS | M FAIL "
        "| any PASS | any FAIL | undetermined | seeds: mean | seeds: 90th pct |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n_max, scenario, delta, rule, r in rows:
        print(
            f"| {n_max} | {scenario} ({delta['efficacy']:g}, {delta['placement']:g}) | {rule} "
            f"| {r['efficacy_pass']:.3f} | {r['efficacy_fail']:.3f} | {r['placement_pass']:.3f} "
            f"| {r['placement_fail']:.3f} | {r['any_pass']:.3f} | {r['any_fail']:.3f} "
            f"| {r['undetermined']:.3f} | {r['seeds_mean']:.1f} | {r['seeds_p90']:.0f} |"
        )
    print(
        "\nThe boundary alone (looks 3..n_max, no stopping, no other condition): share of runs "
        "whose one-sided t p-value crosses the look's level at some look, an error rate "
        f"designed ≤ a = {ALPHA / M} per contrast (≤ {ALPHA} family-wise).\n"
    )
    print("| n_max | error | levels | efficacy | placement | either (family-wise) |")
    print("|---|---|---|---|---|---|")
    names = {
        "null": "PASS-crossing vs 0 when δ = 0",
        "thresholds": "FAIL-crossing vs τ when δ = τ",
    }
    levels_names = {
        "nominal_p": "calibrated on t (used)",
        "normal_p": "normal, through the p-value",
    }
    for n_max, scenario, levels, row in boundary_rows:
        print(
            f"| {n_max} | {names[scenario]} | {levels_names[levels]} | {row['efficacy']:.4f} "
            f"| {row['placement']:.4f} | {row['either']:.4f} |"
        )
    for n_max in DESIGNS:
        p = report[f"boundary_n_max_{n_max}"]["nominal_p"]
        print(
            f"\nnominal one-sided p levels, n_max {n_max}: "
            + ", ".join(f"n={n}: {q:.2g}" for n, q in zip(range(N_MIN, n_max + 1), p, strict=True))
        )
    print(
        f"\nrun_sequential re-ran the first {args.check} runs of every row: {mismatches} mismatches"
    )
    elapsed = time.perf_counter() - started
    report["seconds"] = elapsed

    worst_pass = max(report[f"{n}/null/sequential"]["any_pass"] for n in DESIGNS)
    worst_fail = max(report[f"{n}/thresholds/sequential"]["any_fail"] for n in DESIGNS)
    ok = worst_pass <= LIMIT and worst_fail <= LIMIT and mismatches == 0
    report["ok"] = ok
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    parts = []
    for n in DESIGNS:
        null, thr, alt = (
            report[f"{n}/{s}/sequential"] for s in ("null", "thresholds", "alternative")
        )
        fx = report[f"{n}/alternative/fixed"]
        parts.append(
            f"n 3..{n}: PASS|null {null['any_pass']:.3f}, FAIL|τ {thr['any_fail']:.3f}, "
            f"power E/M {alt['efficacy_pass']:.2f}/{alt['placement_pass']:.2f} with "
            f"{alt['seeds_mean']:.1f} seeds on average (fixed {n}: "
            f"{fx['efficacy_pass']:.2f}/{fx['placement_pass']:.2f})"
        )
    print(
        f"{'OK' if ok else 'FAILED'} sequential seeds, α = {ALPHA} ({elapsed:.0f} s): "
        + "; ".join(parts)
        + f"; limit {LIMIT}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
