"""Which adapters and ranks ``gradience compress`` accepts (GradienceError naming file and field).

Only an update that is s·B·A and nothing else can be truncated exactly: LoRA variants that
add a tensor or change how A and B combine are refused, by their config flag or by a tensor
the plain LoRA layout does not have. Given ranks must name every module, each within its r.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradience.audit.adapter import LoraModule
from gradience.audit.tensors import TensorSource
from gradience.errors import GradienceError
from gradience.ranks.allowed import normalize_allowed_ranks, powers_of_two_up_to

#: Config fields of LoRA variants whose update is not s·B·A alone; truthy → refused.
_VARIANTS = {
    "use_dora": "DoRA divides each column of W + s·B·A by its norm, so truncating B·A changes "
    "every column of the layer, not only the dropped directions",
    "use_qalora": "QALoRA applies A to group-pooled inputs",
    "use_bdlora": "BD-LoRA's block-diagonal factors would not stay block-diagonal",
    "kasa_config": "KaSA puts a learned diagonal between A and B",
    "monteclora_config": "MonteCLoRA samples its factors",
    "arrow_config": "Arrow routes between several adapters",
}
_FACTOR_NAMES = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def refuse_variants(raw: Mapping[str, Any], path: Path) -> None:
    for field, why in _VARIANTS.items():
        if raw.get(field):
            raise GradienceError(
                f"cannot be truncated exactly: {why}; only plain LoRA adapters (rsLoRA, "
                "rank/alpha patterns included) can be compressed",
                path=path,
                field=field,
            )


def refuse_unknown_lora_tensors(source: TensorSource) -> None:
    """A LoRA tensor that is neither a factor nor lora_B's bias belongs to a variant
    (DoRA's lora_magnitude_vector, KaSA's lora_diag, ...): B·A alone is not its update."""
    for key in source.tensors():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts) and not any(p in _FACTOR_NAMES for p in parts):
            raise GradienceError(
                "a LoRA variant's tensor: this adapter's update is not B·A alone, so it cannot "
                "be truncated exactly",
                path=source.path,
                field=key,
            )


def check_ranks(ranks: Mapping[str, int], modules: list[LoraModule], where: str | None) -> None:
    by_name = {m.name: m for m in modules}
    unknown = [name for name in ranks if name not in by_name]
    missing = [m.name for m in modules if m.name not in ranks]
    if unknown or missing:
        detail = f"{len(unknown)} not in the adapter, e.g. {unknown[:2]}" if unknown else ""
        if missing:
            detail += ("; " if detail else "") + f"{len(missing)} missing, e.g. {missing[:2]}"
        raise GradienceError(
            f"the ranks must name exactly the adapter's {len(modules)} LoRA modules ({detail})",
            path=where,
            field="ranks",
        )
    for name, rank in ranks.items():
        r = by_name[name].r
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= r:
            raise GradienceError(
                f"module {name} has rank {rank!r}; it must be an integer in 1..{r} (its rank in "
                "the adapter: truncation cannot add rank)",
                path=where,
                field="ranks",
            )


def allowed_ranks_for(allowed_ranks: Sequence[int] | None, modules: list[LoraModule]) -> list[int]:
    if allowed_ranks is None:
        return powers_of_two_up_to(max(m.r for m in modules))
    try:
        return normalize_allowed_ranks(allowed_ranks)
    except ValueError as exc:
        raise GradienceError(str(exc), field="allowed_ranks") from None
