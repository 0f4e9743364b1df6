"""Reading a run folder and writing the analysis next to it (the I/O around gradience.stats).

Run folder layout (gradience.experiment): ``RUN/aggregated_results.json``,
``RUN/config.yaml``, ``RUN/seed_<s>/probe/audit.json``, ``RUN/seed_<s>/ranks/<variant>.json``.
Only ``aggregated_results.json`` is required; figures whose inputs are missing are skipped
with a note in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradience.config import ExperimentConfig, HypothesisConfig, load_config
from gradience.errors import GradienceError
from gradience.io import read_model, write_model, write_text_atomic
from gradience.results import (
    AggregatedResults,
    AuditResult,
    MechanismAnalysis,
    RankPattern,
    RegisteredPlan,
)
from gradience.stats import analyze
from gradience.stats.analyze import METRICS, check_results
from gradience.stats.registered import PLAN_FILE

RESULTS_FILE = "aggregated_results.json"
ANALYSIS_FILE = "mechanism_analysis.json"
REPORT_FILE = "report.md"
CONFIG_FILE = "config.yaml"
#: Rows of the rank heatmap figure (one per seed); a taller figure says nothing more.
HEATMAP_SEEDS = 3
HEATMAP_VARIANTS = ("per_layer", "per_layer_shuffled_within_type", "per_layer_shuffled")


@dataclass
class AnalysisOutput:
    analysis: MechanismAnalysis
    results: AggregatedResults
    results_path: Path
    output_dir: Path
    written: list[Path] = field(default_factory=list)


def resolve_results_path(path: str | Path) -> Path:
    """RESULTS may be the aggregated_results.json file or the run folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise GradienceError(
            "aggregated results not found (give the file or the run folder)", path=path
        )
    return path


def load_results(path: Path, metric: str | None = None) -> AggregatedResults:
    """Read and validate aggregated results; an inconsistency names the file and the key.

    ``metric`` defaults to the results' own primary metric.
    """
    return checked_results(read_model(path, AggregatedResults), path, metric)


def checked_results(
    results: AggregatedResults, path: Path, metric: str | None = None
) -> AggregatedResults:
    try:
        check_results(results, metric or results.primary_metric)
    except ValueError as exc:
        raise GradienceError(str(exc), path=path) from None
    return results


def load_run_config(
    run_dir: Path, config_path: str | Path | None
) -> tuple[ExperimentConfig | None, str]:
    """--config wins, then the run's copy of its config; None means: use defaults."""
    if config_path is not None:
        return load_config(config_path), str(config_path)
    if (run_dir / CONFIG_FILE).is_file():
        return load_config(run_dir / CONFIG_FILE), str(run_dir / CONFIG_FILE)
    return None, "defaults (no config given, none in the run folder)"


def registered_plan(run_dir: Path) -> dict[str, Any] | None:
    """The plan the run registered before its first seed (None: the folder has none)."""
    path = run_dir / PLAN_FILE
    return read_model(path, RegisteredPlan).plan if path.is_file() else None


def _title(config: ExperimentConfig | None) -> str:
    return config.metadata.name if config is not None else "Mechanism test"


def analyze_results(
    results_arg: str | Path,
    output_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    contrasts: Sequence[tuple[str, str]] = (),
    report: bool = True,
) -> AnalysisOutput:
    """Analyse a run: write mechanism_analysis.json first (so it survives any plotting problem),
    then report.md and the figures, into ``output_dir`` (default: next to the results)."""
    results_path = resolve_results_path(results_arg)
    run_dir = results_path.parent
    config, source = load_run_config(run_dir, config_path)
    results = read_model(results_path, AggregatedResults)
    if config is not None:
        hypothesis = config.hypothesis
    else:  # no config: the results say which metric they were run for
        metric = results.primary_metric
        hypothesis = HypothesisConfig(primary_metric=metric if metric in METRICS else "exact_match")
    results = checked_results(results, results_path, hypothesis.primary_metric)
    for a, b in contrasts:
        for variant in (a, b):
            if variant not in results.variants:
                raise GradienceError(
                    f"--contrast names {variant!r}, which is not in variants "
                    f"{sorted(results.variants)}",
                    path=results_path,
                    field="variants",
                )
    analysis = analyze(results, hypothesis, contrasts, registered_plan(run_dir))
    # as given (like hypothesis_source): a committed analysis made from the repository root
    # names repository-relative files, the same on every clone
    analysis.inputs["results_file"] = str(results_path)
    analysis.inputs["hypothesis_source"] = source
    out = Path(output_dir) if output_dir is not None else run_dir
    output = AnalysisOutput(analysis, results, results_path, out)
    output.written.append(write_model(out / ANALYSIS_FILE, analysis))
    if report:
        output.written += write_report(analysis, results, run_dir, out, _title(config))
    return output


def rerender(directory: str | Path) -> AnalysisOutput:
    """Re-render report.md and the figures from DIR's mechanism_analysis.json and its results."""
    out = Path(directory)
    analysis = read_model(out / ANALYSIS_FILE, MechanismAnalysis)
    results_path = out / RESULTS_FILE
    if not results_path.is_file() and isinstance(analysis.inputs.get("results_file"), str):
        results_path = Path(str(analysis.inputs["results_file"]))
    results_path = resolve_results_path(results_path)
    results = load_results(results_path, str(analysis.inputs.get("primary_metric", "exact_match")))
    recorded = analysis.inputs.get("config_hash")
    if recorded is not None and recorded != results.config_hash:
        raise GradienceError(
            f"config_hash {results.config_hash!r} differs from the analysis's {recorded!r}; "
            "run `gradience mechanism analyze` again",
            path=results_path,
            field="config_hash",
        )
    output = AnalysisOutput(analysis, results, results_path, out)
    output.written += write_report(
        analysis,
        results,
        results_path.parent,
        out,
        _title(load_run_config(results_path.parent, None)[0]),
    )
    return output


def write_report(
    analysis: MechanismAnalysis,
    results: AggregatedResults,
    run_dir: Path,
    out: Path,
    title: str = "Mechanism test",
) -> list[Path]:
    """report.md plus the PNGs whose inputs exist; returns the files written."""
    from gradience.report.decision_plot import decision_caption, plot_decision
    from gradience.report.markdown import DECISION_FIGURE, render_report
    from gradience.report.plots import (
        plot_accuracy,
        plot_probe_spectra,
        plot_rank_heatmaps,
        plot_update_norms,
    )

    metric = str(analysis.inputs.get("primary_metric", results.primary_metric))
    figures: dict[str, str] = {}
    notes: list[str] = []
    written = [plot_decision(analysis, metric, out / DECISION_FIGURE)]
    figures[decision_caption(analysis)] = DECISION_FIGURE
    written.append(plot_accuracy(results, metric, out / "accuracy.png"))
    figures[f"{metric} per variant: mean ± 95% CI, per-seed points joined by seed"] = "accuracy.png"
    if any(run.update_norms for v in results.variants.values() for run in v.runs.values()):
        written.append(plot_update_norms(results, out / "update_norms.png"))
        figures["update size ‖s·B·A‖_F vs rank, per module type, every variant and seed"] = (
            "update_norms.png"
        )
    else:
        notes.append("update-norm plot skipped: the results record no update norms (older run)")
    patterns = _rank_patterns(results, run_dir, notes)
    if patterns:
        shown = [v for v in HEATMAP_VARIANTS if any(v in p for p in patterns.values())]
        seeds = list(patterns)[:HEATMAP_SEEDS]
        if len(patterns) > HEATMAP_SEEDS:
            notes.append(
                f"rank heatmaps show the first {HEATMAP_SEEDS} of {len(patterns)} seeds; every "
                "seed's rank patterns are in seed_<s>/ranks/"
            )
        heatmap = plot_rank_heatmaps(
            {s: patterns[s] for s in seeds}, shown, out / "rank_heatmaps.png"
        )
        written.append(heatmap)
        figures[
            f"ranks per layer × module type: {', '.join(shown)} (seeds {', '.join(map(str, seeds))})"
        ] = "rank_heatmaps.png"
    if analysis.tournament is not None:
        written += _tournament_figures(analysis, results, out, figures)
    audit_seed, audit = _probe_audit(results, run_dir, notes)
    if audit is not None:
        written.append(
            plot_probe_spectra(audit, out / "probe_spectra.png", title=f"probe, seed {audit_seed}")
        )
        figures[f"probe (seed {audit_seed}) singular spectra by module type"] = "probe_spectra.png"
    text = render_report(analysis, results, figures, notes, title=title)
    written.insert(0, write_text_atomic(out / REPORT_FILE, text + "\n"))
    return written


def _tournament_figures(
    analysis: MechanismAnalysis, results: AggregatedResults, out: Path, figures: dict[str, str]
) -> list[Path]:
    """tournament.png (shown with the leaderboard) and every allocator's ranks as heatmaps."""
    from gradience.report.tournament import (
        ALLOCATION_FIGURE,
        TOURNAMENT_FIGURE,
        plot_allocation_heatmaps,
        plot_tournament,
    )

    assert analysis.tournament is not None
    # tournament.png is shown with the leaderboard (gradience.report.tournament), not listed
    written = [plot_tournament(analysis.tournament, out / TOURNAMENT_FIGURE)]
    written.append(plot_allocation_heatmaps(results, out / ALLOCATION_FIGURE))
    figures["ranks per layer × module type, every allocator (one seed)"] = ALLOCATION_FIGURE
    return written


def _try_read(path: Path, model: type, notes: list[str]):
    try:
        return read_model(path, model)
    except GradienceError as exc:
        notes.append(f"skipped {path.name}: {exc}")
        return None


def _rank_patterns(
    results: AggregatedResults, run_dir: Path, notes: list[str]
) -> dict[str, dict[str, RankPattern]]:
    patterns: dict[str, dict[str, RankPattern]] = {}
    for seed in (str(s) for s in results.seeds):
        for variant in HEATMAP_VARIANTS:
            path = run_dir / f"seed_{seed}" / "ranks" / f"{variant}.json"
            if not path.is_file():
                continue
            pattern = _try_read(path, RankPattern, notes)
            if pattern is not None:
                patterns.setdefault(seed, {})[variant] = pattern
    if not patterns:
        notes.append(
            f"rank heatmaps skipped: no seed_<s>/ranks/{{{','.join(HEATMAP_VARIANTS)}}}.json "
            f"under {run_dir}"
        )
    return patterns


def _probe_audit(
    results: AggregatedResults, run_dir: Path, notes: list[str]
) -> tuple[str | None, AuditResult | None]:
    for seed in (str(s) for s in results.seeds):
        path = run_dir / f"seed_{seed}" / "probe" / "audit.json"
        if path.is_file():
            audit = _try_read(path, AuditResult, notes)
            if audit is not None:
                return seed, audit
    notes.append(f"probe spectra skipped: no seed_<s>/probe/audit.json under {run_dir}")
    return None, None
