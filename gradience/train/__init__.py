"""Build a LoRA variant from a rank pattern (verified against the intent) and train it.

Public API: :func:`train_variant`, and the building blocks :func:`target_module_names`,
:func:`uniform_ranks`, :func:`build_lora_config`, :func:`verify_adapter`,
:func:`build_peft_model`. Heavy libraries are imported lazily, inside the functions.
"""

from gradience.train.lora_build import (
    build_lora_config,
    build_peft_model,
    check_ranks_match_model,
    expected_scalings,
    module_alphas,
    target_module_names,
    uniform_ranks,
    verify_adapter,
)

__all__ = [
    "build_lora_config",
    "build_peft_model",
    "check_ranks_match_model",
    "expected_scalings",
    "module_alphas",
    "target_module_names",
    "train_variant",
    "uniform_ranks",
    "verify_adapter",
]


def __getattr__(name: str):
    # train_variant pulls in transformers' Trainer: import it only when asked for.
    if name == "train_variant":
        from gradience.train.run import train_variant

        return train_variant
    raise AttributeError(name)
