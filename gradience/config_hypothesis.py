"""The ``hypothesis`` section of the experiment configuration: how the verdict is decided.

Split from :mod:`gradience.config` (which re-exports :class:`HypothesisConfig`) to keep each
file readable; like every section it rejects unknown keys. The analysis reads it from the run
folder's config, and the run registers it as the analysis plan before its first seed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.config_env import Section


class HypothesisConfig(Section):
    primary_metric: Literal["exact_match", "strict_match"] = Field(
        "exact_match", description="Metric the hypotheses are decided on."
    )
    compression_threshold: float = Field(
        0.02, description="per_layer must beat probe by more than this (absolute accuracy)."
    )
    mechanism_threshold: float = Field(
        0.01,
        description="per_layer must beat the parameter-matched shuffle (per_layer_shuffled_within_type) "
        "by more than this; also the threshold for per_layer vs uniform_matched (heterogeneity).",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Family-wise error rate of the verdict: PASS is Holm-adjusted over the primary "
        "contrasts, FAIL reads the one-sided upper bound at alpha/m (m primary contrasts).",
    )
    min_effect_size: float = Field(
        0.5, ge=0, description="Minimum Cohen's d for compression efficacy."
    )
    power: float = Field(0.8, gt=0, lt=1, description="Target power for the seeds-needed estimate.")
    min_moved_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A placement FAIL needs the within-type shuffle to hold at least this share "
        "of per_layer's LoRA parameters in other modules (mean over seeds); below it the shuffle "
        "is nearly per_layer itself and placement is undetermined, not ruled out.",
    )
    assumed_diff_sd: float = Field(
        0.015,
        gt=0,
        description="Power plan prior (`gradience mechanism power` without --pilot): the sd, "
        "between seeds, of a primary contrast's paired per-seed difference in accuracy. 0.015 is "
        "what issue 18 measured as typical; the demo's learning curves "
        "(experiments/learning_curve/learning_curve.json, 500 items, 5 seeds) give 0.006-0.014 "
        "for per_layer vs probe and vs either shuffle. A pilot run's own sd replaces it.",
    )
    assumed_diff_sd_items: int = Field(
        500,
        gt=0,
        description="The number of eval items assumed_diff_sd was measured on; the plan rescales "
        "it to task.eval_samples (item sampling adds about assumed_discordant_fraction / items "
        "to the variance of the difference, the seed-to-seed part stays).",
    )
    assumed_discordant_fraction: float = Field(
        0.06,
        ge=0,
        le=1,
        description="Power plan prior: the share of eval items two paired runs score differently "
        "((b + c) / N of McNemar), used only to rescale assumed_diff_sd to another number of eval "
        "items. 0.06 is the demo's (3 seeds x 500 items: 0.077 per_layer vs probe, 0.043 vs the "
        "within-type shuffle); a smaller value credits more items with less (conservative).",
    )
    accept_underpowered: bool = Field(
        False,
        description="Let experiments/run_mechanism_test.sh train although the power plan says a "
        "primary threshold is not detectable at len(train.seeds) seeds (as its "
        "--accept-underpowered flag does). Off: the script stops before training.",
    )
    until_decided: bool = Field(
        False,
        description="Sequential seeds (`mechanism run --until-decided`): after min_seeds, add the "
        "configured seeds one at a time and stop as soon as every primary contrast is decided "
        "(gradience.stats.sequential: alpha spending keeps the family-wise error at alpha across "
        "the looks, for PASS and FAIL); the verdict then reads the sequential decisions.",
    )
    min_seeds: int = Field(3, ge=3, description="Seeds at the first sequential look.")
    max_seeds: int | None = Field(
        None,
        ge=3,
        description="Seeds at the last sequential look (null: all of train.seeds); the boundaries "
        "depend on it, so it is fixed before the run in the registered plan.",
    )
