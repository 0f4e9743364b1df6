"""The shape of a mechanism-test run: which variants, which jobs, where they write.

Per seed the jobs form a small DAG::

    seed_<s>/probe   train + eval the uniform probe_r adapter
        -> seed_<s>/audit   probe gate, audit the probe adapter, rank patterns for every variant
            -> seed_<s>/<variant>   train + eval, one job per variant (independent of each other)

with one edge across seeds: the truncation arm's placement pair (``CROSS_SEED``) cuts seed s's
probe to the per_layer ranks that *another* seed's audit chose (:func:`rank_source_seed`: the
next seed of ``train.seeds``, cyclically), so ``seed_<s>/<cross-seed variant>`` also waits for
``seed_<s'>/audit``, and writes its own rank file (``ranks/<variant>.json``) when it runs.

Layout under the run folder::

    config.yaml                       the validated config the run used
    aggregated_results.json
    seed_<s>/bench.json
    seed_<s>/probe/{job.json, adapter/, train_result.json, eval.json, predictions.jsonl, audit.json}
    seed_<s>/ranks/{job.json, <variant>.json}      (the audit job's folder; a cross-seed
                                                    variant's own job writes its <variant>.json)
    seed_<s>/<variant>/{job.json, adapter/, train_result.json, eval.json, predictions.jsonl}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gradience.config import ExperimentConfig, cross_seed_problem, hash_data
from gradience.errors import GradienceError
from gradience.results import CROSS_SEED_VARIANTS, MODEL_ALLOCATED_VARIANTS, TRUNCATED_VARIANTS
from gradience.train.identity import training_identity_hash

PROBE = "probe"
AUDIT = "audit"
RANKS_DIR = "ranks"
SHUFFLED_K = "per_layer_shuffled_k"
#: Variants made by truncating the seed's probe (SVD, no retraining), then evaluated.
TRUNCATED = TRUNCATED_VARIANTS
#: Truncations cut to ranks another seed's audit chose: the placement test without retraining.
#: ``per_layer_truncated`` cuts the probe to the ranks its own audit read off that very
#: spectrum (energy@τ keeps >= τ of every module's energy by construction), so any shuffle of
#: them keeps less and loses: it measures what compression costs, never placement.
CROSS_SEED = CROSS_SEED_VARIANTS
#: Allocators that need the base model and the training data (EVA, AdaLoRA): their own job
#: allocates, fits the ranks to the budget and writes ``ranks/<variant>.json``.
MODEL_ALLOCATED = MODEL_ALLOCATED_VARIANTS
#: Variants whose own job writes their rank file (not the audit job).
OWN_RANKS = CROSS_SEED + MODEL_ALLOCATED


def audit_ranks_of(variant: str) -> str:
    """The audit's rank pattern a (same-seed) variant's job takes as its input: its own, or
    per_layer's for a model-allocated variant (they set the budget it allocates to)."""
    return "per_layer" if variant in MODEL_ALLOCATED else variant


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def trained_variants(cfg: ExperimentConfig) -> list[str]:
    """The variants this config trains (or, for TRUNCATED, derives from the probe) and evaluates,
    probe first; ``per_layer_shuffled_k`` expands to k names."""
    names = [PROBE]
    for variant in cfg.compression.variants:
        if variant == PROBE:
            continue
        if variant == SHUFFLED_K:
            names += [f"{SHUFFLED_K}{i}" for i in range(cfg.compression.shuffle_k)]
        else:
            names.append(variant)
    return names


def rank_source_seed(cfg: ExperimentConfig, seed: int, variant: str) -> int:
    """The seed whose audit chose ``variant``'s ranks for ``seed``: ``seed`` itself, or for the
    ``CROSS_SEED`` variants the next seed of ``train.seeds`` (the last seed takes the first's)."""
    if variant not in CROSS_SEED:
        return seed
    check_cross_seed(cfg)
    seeds = list(cfg.train.seeds)
    return seeds[(seeds.index(seed) + 1) % len(seeds)]


def check_cross_seed(cfg: ExperimentConfig) -> None:
    """A cross-seed variant needs another seed; a config changed after validation (``--seeds``
    on the command line) is checked again here, before any job runs."""
    problem = cross_seed_problem(cfg)
    if problem:
        raise GradienceError(problem, field="compression.variants")


def audit_variants(cfg: ExperimentConfig) -> list[str]:
    """The rank patterns a seed's audit writes and hands on: its own trained variants (probe
    first), and per_layer always (the other seeds' cross-seed variants are cut to it; the
    model-allocated variants are fitted to its budget)."""
    names = [v for v in trained_variants(cfg) if v not in OWN_RANKS]
    return names if "per_layer" in names else [*names, "per_layer"]


def path_component(name: str) -> str:
    """``name`` if it is one plain file name, so that no seed or variant writes outside the run."""
    if not _PLAIN_NAME.match(name) or ".." in name:
        raise GradienceError(
            f"{name!r} cannot name a file in the run folder (letters, digits, '_', '.', '+', "
            "'-' only, no '..')",
            field="train.seeds / compression.variants",
        )
    return name


def seed_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / path_component(f"seed_{int(seed)}")


def job_id(seed: int, name: str) -> str:
    """'seed_42/probe', 'seed_42/audit', 'seed_42/per_layer', ..."""
    return f"seed_{seed}/{name}"


def job_dir(run_dir: Path, seed: int, name: str) -> Path:
    """The folder a job writes into (the audit job writes ranks/ and probe/audit.json)."""
    return seed_dir(run_dir, seed) / path_component(RANKS_DIR if name == AUDIT else name)


def ranks_file(run_dir: Path, seed: int, variant: str) -> Path:
    return seed_dir(run_dir, seed) / RANKS_DIR / path_component(f"{variant}.json")


def audit_file(run_dir: Path, seed: int) -> Path:
    return seed_dir(run_dir, seed) / PROBE / "audit.json"


def local_schedule(cfg: ExperimentConfig) -> list[tuple[int, str]]:
    """(seed, job name) of every job, in the order the one-process executor runs them.

    Seed by seed: probe, audit, the seed's own variants; a cross-seed variant runs as soon as
    both audits it needs (its own seed's and its rank source's) have run, so the first seed's
    waits for the second seed's audit.
    """
    variants = trained_variants(cfg)[1:]
    waiting = [(s, v) for s in cfg.train.seeds for v in variants if v in CROSS_SEED]
    order: list[tuple[int, str]] = []
    audited: set[int] = set()
    for seed in cfg.train.seeds:
        order += [(seed, PROBE), (seed, AUDIT)]
        audited.add(seed)
        order += [(seed, v) for v in variants if v not in CROSS_SEED]
        ready = [(s, v) for s, v in waiting if {s, rank_source_seed(cfg, s, v)} <= audited]
        order += ready
        waiting = [job for job in waiting if job not in ready]
    return order


def job_ids(cfg: ExperimentConfig) -> list[str]:
    """Every job of the run, in the order the local executor runs them."""
    return [job_id(seed, name) for seed, name in local_schedule(cfg)]


def experiment_hash(cfg: ExperimentConfig) -> str:
    """Identity of the run's *results*: everything that changes an adapter, an eval or a rank.

    Where and how the run executes (output folder, executor, Ray address, threads) and the
    analysis settings are left out, so a local and a Ray run of one experiment share a hash.
    """
    data = cfg.model_dump(mode="json", include={"model", "task", "train", "lora", "compression"})
    data["env"] = {"device": cfg.env.device, "torch_dtype": cfg.env.torch_dtype}
    return hash_data(data)


def train_inputs_hash(
    cfg: ExperimentConfig,
    seed: int,
    variant: str,
    ranks: Mapping[str, int] | None,
    identity: str | None = None,
    upstream: str | None = None,
    rank_source: int | None = None,
) -> str:
    """A train+eval job's inputs: training identity, seed, variant and ranks (None = probe).

    ``identity`` is :func:`gradience.train.identity.training_identity_hash` of ``cfg`` (settings,
    data file contents, library versions); pass the run's to avoid re-reading data files.
    ``upstream``: the digest of an input adapter the job derives from (the truncation arm's probe).
    ``rank_source``: for a cross-seed variant, the seed whose audit chose the ranks; ``ranks``
    are then that audit's per_layer ranks, which the variant's own pattern is derived from, so
    a changed upstream audit changes the hash and the job is redone.
    """
    return hash_data(
        {
            "training": identity if identity is not None else training_identity_hash(cfg),
            "seed": seed,
            "variant": variant,
            "ranks": dict(ranks) if ranks is not None else None,
            **({"upstream": upstream} if upstream is not None else {}),
            **({"rank_source": rank_source} if rank_source is not None else {}),
        }
    )


def audit_inputs_hash(cfg: ExperimentConfig, seed: int, probe_digest: str | None) -> str:
    """The audit job's inputs: the probe adapter's bytes and every setting that shapes a rank."""
    return hash_data(
        {
            "seed": seed,
            "probe_adapter": probe_digest,
            "probe_r": cfg.lora.probe_r,
            "compression": cfg.compression.model_dump(mode="json", exclude={"probe_gate"}),
        }
    )


@dataclass(frozen=True)
class RunContext:
    """What every job needs; picklable, so Ray can ship it to a worker.

    ``identity`` (computed once, on the driver, when not given) is the training identity every
    job's resume decision uses, so all jobs of a run, local or remote, agree on it.
    """

    cfg: ExperimentConfig
    run_dir: Path
    identity: str = field(default="")

    def __post_init__(self) -> None:
        check_cross_seed(self.cfg)
        if not self.identity:
            object.__setattr__(self, "identity", training_identity_hash(self.cfg))
