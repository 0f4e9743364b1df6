"""One contrast A vs B from the aggregated results: every statistic the verdict and report use.

Only seeds where both variants finished are paired; the rest are named in ``notes`` (with the
recorded failure, if any). Undefined statistics are ``None`` and the reason is in the
statistic's ``reason`` field or in ``notes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradience.results import (
    AggregatedResults,
    Contrast,
    ItemLevel,
    McNemar,
    PooledItemTest,
    TestStat,
)
from gradience.stats.item_level import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_method,
    hierarchical_bootstrap,
    mcnemar_exact,
)
from gradience.stats.power import min_detectable_effect, paired_t_power, seeds_for_power
from gradience.stats.seed_level import TTest, cohens_d, cohens_dz, mean_diff, paired_t, welch_t


def contrast_name(a: str, b: str) -> str:
    return f"{a}_vs_{b}"


def paired_seeds(results: AggregatedResults, a: str, b: str) -> list[str]:
    """Seeds (as the string keys of ``runs``) where both variants have a finished run, in run order."""
    runs_a, runs_b = results.variants[a].runs, results.variants[b].runs
    ordered = [str(s) for s in results.seeds]
    ordered += sorted((set(runs_a) | set(runs_b)) - set(ordered), key=_seed_sort_key)
    return [s for s in ordered if s in runs_a and s in runs_b]


def _seed_sort_key(seed: str) -> tuple[int, str]:
    return (int(seed), seed) if seed.lstrip("-").isdigit() else (0, seed)


def param_ratio(results: AggregatedResults, a: str, b: str, seeds: Sequence[str]) -> float | None:
    """Mean trainable parameters of A over the paired seeds / the same of B (None if undefined)."""
    if not seeds:
        return None
    runs_a, runs_b = results.variants[a].runs, results.variants[b].runs
    params_b = float(np.mean([runs_b[s].trainable_params for s in seeds]))
    if params_b <= 0:
        return None
    return float(np.mean([runs_a[s].trainable_params for s in seeds])) / params_b


def _test_stat(test: TTest) -> TestStat:
    return TestStat(statistic=test.statistic, p=test.p, reason=test.reason)


def _unpaired_notes(results: AggregatedResults, a: str, b: str, paired: Sequence[str]) -> list[str]:
    notes = []
    failures = {(str(f.seed), f.variant): f.error for f in results.failures}
    for variant, other in ((a, b), (b, a)):
        for seed in results.variants[variant].runs:
            if seed not in paired:
                error = failures.get((seed, other))
                why = f" ({other} failed: {error})" if error else f" ({other} has no result)"
                notes.append(f"seed {seed} left out of {a} vs {b}: only {variant} finished{why}")
    for seed in results.seeds:
        if str(seed) not in results.variants[a].runs and str(seed) not in results.variants[b].runs:
            errors = [
                f"{v}: {failures[(str(seed), v)]}" for v in (a, b) if (str(seed), v) in failures
            ]
            why = f" ({'; '.join(errors)})" if errors else ""
            notes.append(f"seed {seed} left out of {a} vs {b}: neither variant finished{why}")
    return notes


def missing_contrast(a: str, b: str, missing: Sequence[str]) -> Contrast:
    """The contrast of a variant pair the results do not contain: every statistic null."""
    reason = f"variant(s) {', '.join(missing)} not in the results"
    undefined = TestStat(statistic=None, p=None, reason=reason)
    return Contrast(
        a=a,
        b=b,
        n_seeds=0,
        mean_diff=None,
        ci95=None,
        paired_t=undefined,
        welch_t=undefined,
        cohens_d=None,
        cohens_dz=None,
        holm_p=None,
        item_level=ItemLevel(
            mcnemar={},
            pooled=PooledItemTest(
                method=bootstrap_method(BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
                p=None,
                ci95=None,
                reason=reason,
            ),
        ),
        seeds_for_80pct_power=None,
        notes=[reason],
    )


def compare(
    results: AggregatedResults,
    a: str,
    b: str,
    *,
    metric: str,
    alpha: float,
    power: float,
) -> Contrast:
    """All statistics of A vs B (one-sided: H1 is A > B). ``holm_p`` is filled in by ``holm``,
    the figures at a threshold by :func:`set_power` once the contrast's level is known."""
    missing = [v for v in (a, b) if v not in results.variants]
    if missing:
        return missing_contrast(a, b, missing)
    seeds = paired_seeds(results, a, b)
    runs_a, runs_b = results.variants[a].runs, results.variants[b].runs
    scores_a = [float(getattr(runs_a[s], metric)) for s in seeds]
    scores_b = [float(getattr(runs_b[s], metric)) for s in seeds]
    diff = mean_diff(scores_a, scores_b)
    d, dz = cohens_d(scores_a, scores_b), cohens_dz(scores_a, scores_b)
    needed = seeds_for_power(dz.value, alpha, power)
    notes = _unpaired_notes(results, a, b, seeds)
    notes += [
        f"{name}: {r}"
        for name, r in (
            ("ci95", diff.reason),
            ("cohens_d", d.reason),
            ("cohens_dz", dz.reason),
            ("power", needed.reason),
        )
        if r
    ]
    contrast = Contrast(
        a=a,
        b=b,
        n_seeds=len(seeds),
        mean_diff=diff.mean,
        ci95=diff.ci95,
        paired_t=_test_stat(paired_t(scores_a, scores_b)),
        welch_t=_test_stat(welch_t(scores_a, scores_b)),
        cohens_d=d.value,
        cohens_dz=dz.value,
        holm_p=None,
        item_level=_item_level(results, a, b, seeds, metric),
        item_level_metric=item_metric(results, a, b, seeds, metric),
        seeds_for_80pct_power=needed.n,
        notes=notes,
        seeds=[int(s) if s.lstrip("-").isdigit() else s for s in seeds],
        values_a=scores_a,
        values_b=scores_b,
        sd_diff=diff.sd,
        param_ratio=param_ratio(results, a, b, seeds),
    )
    if seeds and all(m.b + m.c == 0 for m in contrast.item_level.mcnemar.values()):
        contrast.notes.append(
            f"{a} and {b} are right on exactly the same items in every paired seed: "
            "check that they really trained different ranks (and learned anything)"
        )
    if metric == "strict_match":
        contrast.item_level_exact_match = _item_level(results, a, b, seeds, "exact_match")
    _failures_as_loss(contrast, results, metric)
    return contrast


def set_power(contrast: Contrast, threshold: float, level: float, power: float) -> None:
    """Power figures at one-sided ``level`` (the decision's): power and seeds needed for a true
    difference equal to the threshold, and the smallest difference detectable at ``power``,
    from the observed sd of the paired differences."""
    contrast.threshold = threshold
    contrast.decision_level = level
    contrast.power_at_threshold = None
    contrast.seeds_for_80pct_power_at_threshold = None
    contrast.min_detectable_effect = min_detectable_effect(
        contrast.sd_diff, contrast.n_seeds, level, power
    )
    sd = contrast.sd_diff
    if not sd or threshold <= 0:
        contrast.notes.append(
            "power at the threshold: needs a positive sd of the paired differences"
        )
        return
    dz_threshold = threshold / sd
    if contrast.n_seeds >= 2:
        contrast.power_at_threshold = paired_t_power(dz_threshold, contrast.n_seeds, level)
    needed = seeds_for_power(dz_threshold, level, power)
    contrast.seeds_for_80pct_power_at_threshold = needed.n
    if needed.reason:
        contrast.notes.append(f"power at the threshold: {needed.reason}")


def _failures_as_loss(contrast: Contrast, results: AggregatedResults, metric: str) -> None:
    """The sensitivity to dropping seeds pairwise: a failed run counted as a score of 0.

    Dropping a seed where one variant failed makes a variant that fails more often look
    better (its bad seeds vanish); counting the failure as a loss bounds that.
    """
    failed = {(str(f.seed), f.variant) for f in results.failures}
    runs_a = results.variants[contrast.a].runs
    runs_b = results.variants[contrast.b].runs
    extra = [
        str(seed)
        for seed in results.seeds
        if seed not in results.gated_seeds
        and ((str(seed) in runs_a) != (str(seed) in runs_b))
        and ((str(seed), contrast.a) in failed or (str(seed), contrast.b) in failed)
    ]
    if not extra:
        return
    seeds = [str(s) for s in contrast.seeds] + extra
    a = [float(getattr(runs_a[s], metric)) if s in runs_a else 0.0 for s in seeds]
    b = [float(getattr(runs_b[s], metric)) if s in runs_b else 0.0 for s in seeds]
    diff, test = mean_diff(a, b), paired_t(a, b)
    contrast.failures_as_loss = TestStat(statistic=diff.mean, p=test.p, reason=test.reason)
    contrast.failures_as_loss_ci95 = diff.ci95
    ci = "undefined" if diff.ci95 is None else f"[{diff.ci95[0]:+.4f}, {diff.ci95[1]:+.4f}]"
    contrast.notes.append(
        f"sensitivity: counting the {len(extra)} failed run(s) of seed(s) {', '.join(extra)} as "
        f"a loss (score 0) instead of dropping the seed: {contrast.a} - {contrast.b} = "
        f"{diff.mean:+.4f} over {len(seeds)} seeds, 95% CI {ci}"
    )


def item_metric(
    results: AggregatedResults, a: str, b: str, seeds: Sequence[str], metric: str
) -> str:
    """The metric the item-level tests can use: strict_match where every paired run recorded it."""
    runs_a, runs_b = results.variants[a].runs, results.variants[b].runs
    recorded = all(
        runs[s].item_strict_correct is not None for runs in (runs_a, runs_b) for s in seeds
    )
    return "strict_match" if metric == "strict_match" and recorded else "exact_match"


def _item_level(
    results: AggregatedResults, a: str, b: str, seeds: Sequence[str], metric: str
) -> ItemLevel:
    runs_a, runs_b = results.variants[a].runs, results.variants[b].runs
    strict = item_metric(results, a, b, seeds, metric) == "strict_match"
    mcnemar: dict[str, McNemar] = {}
    diffs = []
    for seed in seeds:
        if strict:
            correct_a = runs_a[seed].item_strict_correct or []
            correct_b = runs_b[seed].item_strict_correct or []
        else:
            correct_a, correct_b = runs_a[seed].item_correct, runs_b[seed].item_correct
        test = mcnemar_exact(correct_a, correct_b)
        mcnemar[seed] = McNemar(b=test.b, c=test.c, p=test.p)
        diffs.append(np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float))
    boot = hierarchical_bootstrap(diffs)
    reason = boot.reason
    if metric != "exact_match" and not strict:
        extra = (
            f"item correctness is exact_match's (the results carry no per-item {metric}); "
            f"the seed-level metric is {metric}"
        )
        reason = f"{reason}; {extra}" if reason else extra
    pooled = PooledItemTest(
        method=boot.method,
        p=boot.p,
        ci95=boot.ci95,
        reason=reason,
        estimate=boot.estimate,
        resamples=boot.resamples,
        rng_seed=boot.rng_seed,
    )
    return ItemLevel(mcnemar=mcnemar, pooled=pooled)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sorted ascending, p_(i) · (m - i), running max, cap 1.

    Written out rather than calling statsmodels' ``multipletests(method="holm")``, which runs
    a full ``gc.collect()`` per call (0.1-0.5 s in a process holding torch); the tests check
    this against statsmodels.
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (p.size - np.arange(p.size))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def holm(contrasts: Sequence[Contrast]) -> None:
    """Holm-adjust the paired-t p-values of one family of contrasts, in place (``holm_p``).

    A contrast whose p is undefined still counts in the family size, as p = 1: the family
    does not shrink (and the correction weaken) because one test could not be computed.
    """
    if not contrasts:
        return
    raw = [c.paired_t.p if c.paired_t.p is not None else 1.0 for c in contrasts]
    for contrast, p in zip(contrasts, holm_adjust(raw), strict=True):
        contrast.holm_p = float(p) if contrast.paired_t.p is not None else None
