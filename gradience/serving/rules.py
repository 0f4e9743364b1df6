"""The reference (PEFT) and the helpers every server's rule uses (pure: no I/O).

**PEFT** (huggingface/peft v0.21.2, the reference). ``LoraModel._create_and_replace``
(``src/peft/tuners/lora/model.py``) takes each module's r and α from ``rank_pattern`` /
``alpha_pattern`` through ``get_pattern_key`` (``src/peft/utils/other.py``: the first key
with ``re.match(rf"(.*\\.)?({key})$", name)``), and ``LoraLayer.update_layer``
(``src/peft/tuners/lora/layer.py``) sets ``scaling = α/√r`` with ``use_rslora``, else α/r.
A stored factor whose rank differs from the config's makes ``load_state_dict`` fail with a
size mismatch (PEFT refuses the adapter); weights of a module that ``target_modules`` does
not select are ignored (that module's update is dropped).

The servers' rules are in :mod:`.vllm_loader`, :mod:`.sglang_loader` and :mod:`.lorax_loader`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradience.results_serving import ServedModule, ServerCheck
from gradience.serving.layout import AdapterLayout, ModuleLayout, scaling

PEFT_SOURCE = (
    "huggingface/peft v0.21.2: src/peft/tuners/lora/model.py LoraModel._create_and_replace, "
    "src/peft/utils/other.py get_pattern_key, src/peft/tuners/lora/layer.py "
    "LoraLayer.update_layer"
)


def peft_scaling(layout: AdapterLayout, module: ModuleLayout) -> float:
    """The scaling PEFT applies to ``module`` as the config describes it (the reference)."""
    return scaling(module.alpha, module.config_rank, layout.config.use_rslora)


def served(
    module: ModuleLayout,
    reference: float,
    served_scaling: float,
    served_rank: int | None,
    note: str | None = None,
) -> ServedModule:
    """A module served as s_served·B·A: its status and relative error against s_peft·B·A."""
    error = abs(served_scaling / reference - 1.0) if reference else 0.0
    # Scalings are quotients of the same config numbers: a difference below 1e-12 is rounding.
    status = "exact" if error <= 1e-12 else "mis-scaled"
    return ServedModule(
        name=module.name,
        status=status,
        served_scaling=served_scaling,
        scale_error=0.0 if status == "exact" else error,
        served_rank=served_rank,
        note=note,
    )


def summarize(
    server: str,
    source: str,
    rule: str,
    modules: list[ServedModule],
    *,
    max_lora_rank: int | None,
    held_params: int | None,
    problems: Sequence[str] = (),
) -> ServerCheck:
    """A server's verdict: exact only when every module is confirmed exact and nothing refused."""
    errors = [m.scale_error for m in modules if m.scale_error is not None]
    return ServerCheck(
        server=server,  # type: ignore[arg-type]
        source=source,
        rule=rule,
        served_exactly=not problems and all(m.status == "exact" for m in modules),
        max_scale_error=max(errors) if errors else None,
        max_lora_rank=max_lora_rank,
        held_params=held_params,
        problems=list(problems),
        modules=modules,
    )


def refused(modules: Sequence[ModuleLayout], why: str) -> list[ServedModule]:
    return [ServedModule(name=m.name, status="refused", note=why) for m in modules]


def check_peft(layout: AdapterLayout) -> ServerCheck:
    """PEFT's ``PeftModel.from_pretrained``: exact wherever tensors and config agree."""
    modules = []
    for m in layout.modules:
        if m.stored_rank != m.config_rank or m.b_rank != m.stored_rank:
            modules.append(
                ServedModule(
                    name=m.name,
                    status="refused",
                    note=f"stored rank {m.stored_rank} but config rank {m.config_rank}: "
                    "load_state_dict fails with a size mismatch",
                )
            )
        elif not m.targeted:
            modules.append(
                ServedModule(
                    name=m.name,
                    status="dropped",
                    scale_error=1.0,
                    note="not selected by target_modules: its weights are ignored",
                )
            )
        else:
            modules.append(
                served(m, peft_scaling(layout, m), peft_scaling(layout, m), m.stored_rank)
            )
    problems = [f"{m.name}: {m.note}" for m in modules if m.status == "refused"][:1]
    return summarize(
        "peft",
        PEFT_SOURCE,
        "each module's own α/r (α/√r with rsLoRA), r and α from rank_pattern/alpha_pattern",
        modules,
        max_lora_rank=None,
        held_params=sum(m.stored_rank * m.width for m in layout.modules),
        problems=problems,
    )
