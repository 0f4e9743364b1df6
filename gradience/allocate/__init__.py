"""Allocators that need the model or the data: PEFT's EVA and AdaLoRA, read as raw ranks.

Each returns one rank per adapted module (names relative to the base model, the names of
gradience's rank patterns and audits: ``model.layers.0.self_attn.q_proj``), in model order,
0 where the method leaves a module out. The ranks are *raw*: the tournament rescales them to
its parameter budget (:mod:`gradience.ranks`), then trains them as plain LoRA.

What is taken from PEFT, and what is not. Only the allocation: the number of EVA singular
vectors per module (:func:`eva_ranks`, from ``peft.tuners.lora.eva.get_eva_state_dict``) and
the number of AdaLoRA triplets left unmasked (:func:`adalora_ranks`, from
``AdaLoraModel.update_and_allocate`` and its ``rank_pattern``). Neither method's
initialisation leaves this package (EVA's singular vectors as A; AdaLoRA's trained P, Λ, Q):
the tournament trains every allocation from gradience's paired initialisation, so allocators
differ only in where the ranks go and how many, not in where training starts. Nothing here re-implements EVA or
AdaLoRA; the tests compare the ranks with PEFT's own output on the embedded model.

Verified against PEFT 0.21.2 and transformers 5.24 (Trainer callback order, see
:mod:`gradience.allocate.adalora`). EVA needs PEFT >= 0.14, where it first shipped (an older
PEFT is a GradienceError); AdaLoRA's step conventions are those of PEFT's
``update_and_allocate`` (0-based step, final allocation at ``total_step - tfinal``).

Cost. EVA: forward passes only (no gradients), until every module's incremental SVD has
converged, plus one ``svd_lowrank`` per distinct module input and batch, whose size grows with
``round(probe_r * rho)`` components. On the embedded model (``probe_r`` 4, ``rho`` 2, batches
of 8): 29 forward passes, 1-3 s on one CPU thread. AdaLoRA: one training run at ``init_r``
for ``total_step - tfinal + 1`` steps (80% of ``train.max_steps`` by default); its per-step
``update_and_allocate`` (elementwise importance EMAs over the adapter, one ``kthvalue`` over
all triplets) grows with the adapter, not the model: a sixth of the step time on the 0.6 M
parameter embedded model, whose adapter is large next to it. Measured there (17 steps of 4
examples, ``init_r`` 4): 2-3 s including loading.
"""

from gradience.allocate.eva import (
    EvaNotConverged,
    EvaSettings,
    eva_ranks,
    eva_ranks_for_config,
    training_batches,
)

__all__ = [
    "AdaLoraAllocation",
    "AdaLoraAllocator",
    "AdaLoraSettings",
    "EvaNotConverged",
    "EvaSettings",
    "adalora_ranks",
    "eva_ranks",
    "eva_ranks_for_config",
    "ranks_from_rank_pattern",
    "run_adalora",
    "training_batches",
]

_ADALORA = {
    "AdaLoraAllocation",
    "AdaLoraAllocator",
    "AdaLoraSettings",
    "adalora_ranks",
    "ranks_from_rank_pattern",
    "run_adalora",
}


def __getattr__(name: str):
    # adalora subclasses transformers' TrainerCallback: import it only when asked for.
    if name in _ADALORA:
        from gradience.allocate import adalora

        return getattr(adalora, name)
    raise AttributeError(name)
