"""``gradience suggest --budget``: ranks at an exact parameter budget, ready for PEFT and axolotl.

The output is a rank pattern file (it reads as :class:`gradience.results.RankPattern`) with
extra keys: ``allocator``, ``budget``, ``budget_spec``, ``param_ratio``, ``removed`` and two
ready-to-paste config fragments, ``peft`` (``LoraConfig`` keyword arguments) and ``axolotl``
(YAML keys). Both name every adapted module explicitly: ``target_modules`` lists the modules
kept (rank ≥ 1; a module the allocator removes is simply not targeted) and each rank key is
``^<escaped module name>$``, which PEFT's suffix rule matches for that one module only.
axolotl forwards ``lora_rank_pattern`` to PEFT's ``rank_pattern`` unchanged (axolotl PR #3673).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from gradience.errors import GradienceError

if TYPE_CHECKING:  # the CLI imports this module for --help: keep pydantic out of that path
    from gradience.ranks.budget import BudgetAllocation
    from gradience.results import AuditResult, RankPattern

#: What ``--help`` says about the budget syntax.
BUDGET_HELP = (
    "parameter budget: a whole number of LoRA parameters (1200000 or 1_200_000), Fx for a "
    "fraction F in (0, 1] of the audited adapter's parameters (0.25x), or per_layer for the "
    "parameters of --policy's suggestion (with --allowed-ranks and --margin). Ranks are any "
    "integer from 1 to each module's audited r; their count Σ r·(d_in+d_out) lands within "
    "half a rank unit (d_in+d_out) of the cheapest module that can still grow"
)
ALLOCATOR_HELP = (
    "how to place rank at the budget (with --budget): a policy (energy@TAU, erank, stable_rank, "
    "knee, oht: its raw ranks rescaled, shape kept), global_energy (one threshold on kept "
    "energy per parameter across modules) or depth (ranks rising linearly with layer). "
    "Default: --policy"
)
_NUMBER = re.compile(r"^\d[\d_,]*$")
_FRACTION = re.compile(r"^(\d*\.?\d+(?:e-?\d+)?)x$", re.IGNORECASE)


def parse_budget(text: str, audit: AuditResult, per_layer: dict[str, int] | None) -> int:
    """The budget ``--budget`` names, in parameters (GradienceError on anything else)."""
    from gradience.ranks import budget_from

    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    probe = {m.name: m.r for m in audit.modules}
    spec = text.strip()
    fraction = _FRACTION.match(spec)
    try:
        if spec == "per_layer" and per_layer is not None:
            return budget_from("per_layer", per_layer, probe, shapes)
        if fraction:
            return budget_from(fraction.group(1), probe, probe, shapes)
    except ValueError as exc:
        raise GradienceError(str(exc), field="--budget") from None
    if _NUMBER.match(spec) and int(spec.replace("_", "").replace(",", "")) > 0:
        return int(spec.replace("_", "").replace(",", ""))
    raise GradienceError(
        f"expected a positive number of parameters, Fx (e.g. 0.25x) or per_layer, got {text!r}",
        field="--budget",
    )


def run_budget(
    args: argparse.Namespace, audit: AuditResult, allowed_ranks: list[int] | None
) -> int:
    """Allocate at the budget, write or print the pattern, and say what was achieved.

    ``allowed_ranks`` (from ``--allowed-ranks``) and ``--margin`` only shape the per_layer
    budget, and are refused with any other budget, where they would have no effect.
    """
    from gradience.audit.table import render_pattern
    from gradience.io import write_model
    from gradience.ranks import BudgetError, default_allowed_ranks, suggest_ranks
    from gradience.ranks.allocators import allocate, allocator_name

    allocator = args.allocator or args.policy
    try:
        allocator = allocator_name(allocator)
    except ValueError as exc:
        raise GradienceError(str(exc), field="--allocator") from None
    per_layer = None
    if args.budget.strip() == "per_layer":
        allowed = allowed_ranks or default_allowed_ranks(audit)
        per_layer = suggest_ranks(
            audit, args.policy, allowed, 1.0 if args.margin is None else args.margin
        ).ranks
    elif allowed_ranks or args.margin is not None:
        flag = "--allowed-ranks" if allowed_ranks else "--margin"
        raise GradienceError(
            "only shapes the per_layer budget; with a budget of parameters or Fx it has no "
            "effect (ranks at a budget are any integer up to each module's r)",
            field=flag,
        )
    budget = parse_budget(args.budget, audit, per_layer)
    try:
        result = allocate(audit, allocator, budget, allow_zero=args.allow_zero)
    except BudgetError as exc:
        raise GradienceError(str(exc), path=args.audit_json, field="--budget") from None
    except ValueError as exc:
        raise GradienceError(str(exc), path=args.audit_json) from None
    pattern = budget_pattern(audit, allocator, args.budget.strip(), result)
    summary = (
        f"{render_pattern(pattern, audit.summary.total_params)}; ratio to the budget "
        f"({args.budget.strip()}): {result.ratio:.5f}"
    )
    if args.output:
        write_model(args.output, pattern)
        print(summary)
        print(f"wrote rank pattern to {args.output}", file=sys.stderr)
    else:
        print(pattern.model_dump_json(indent=2))
        print(summary, file=sys.stderr)
    return 0


def budget_pattern(
    audit: AuditResult, allocator: str, spec: str, result: BudgetAllocation
) -> RankPattern:
    """The RankPattern of an allocation, with the budget and the PEFT/axolotl fragments."""
    from gradience.results import RankPattern
    from gradience.train.lora_build import pattern_key

    probe_r = max(m.r for m in audit.modules)
    kept = [name for name, rank in result.ranks.items() if rank > 0]
    rank_keys = {pattern_key(name): result.ranks[name] for name in kept}
    top = max(result.ranks.values())
    return RankPattern(
        policy=f"{allocator} at a budget of {result.budget:,} parameters",
        allowed_ranks=list(range(1, probe_r + 1)),
        probe_r=probe_r,
        ranks=result.ranks,
        trainable_params=result.params,
        allocator=allocator,
        budget=result.budget,
        budget_spec=spec,
        param_ratio=result.ratio,
        removed=result.removed,
        peft={"r": top, "target_modules": kept, "rank_pattern": rank_keys},
        axolotl={"lora_r": top, "lora_target_modules": kept, "lora_rank_pattern": rank_keys},
    )
