"""Evaluate a base model or LoRA adapter: batched greedy generation, GSM8K extraction, per-item records.

Public API: :func:`evaluate_adapter` (loads the model, writes ``eval.json`` and
``predictions.jsonl``), :func:`evaluate_model` (the same for a model already in memory) and
:func:`generate_completions`. Heavy libraries are imported lazily, inside the functions.
"""

from gradience.evaluate.generate import Generation, generate_completions, length_sorted_batches
from gradience.evaluate.run import evaluate_adapter, evaluate_model, resolve_adapter_dir

__all__ = [
    "Generation",
    "evaluate_adapter",
    "evaluate_model",
    "generate_completions",
    "length_sorted_batches",
    "resolve_adapter_dir",
]
