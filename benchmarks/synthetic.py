"""Stand-ins for Mistral-7B and GSM8K that the GPU checks can build offline in seconds.

* :func:`synthetic_tokenizer`: a gradience WordLevel tokenizer of about ``vocab_size`` made-up
  words (each word is one token), so lengths in tokens are lengths in words;
* :func:`model_folder`: a model folder with ``config.json`` and the tokenizer but no weights,
  so the pre-flight estimate (:func:`gradience.experiment.preflight.model_shape`) reads the
  shape from it exactly as it reads a hub model's;
* :func:`random_loader`: a ``model_loader`` for :func:`gradience.train.run.train_variant` that
  builds that folder's model with random weights directly on the device (a 7B model is not
  written to disk and read back);
* :func:`gsm8k_like_task`: training items whose token lengths follow GSM8K's
  (:func:`lora_model.gsm8k_lengths`), prompt about a third of each, answer ending ``#### N``.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lora_model

#: Share of a GSM8K example (prompt + worked answer) that is the prompt, in tokens.
PROMPT_SHARE = 0.35


def synthetic_tokenizer(vocab_size: int) -> tuple[Any, list[str]]:
    """A WordLevel tokenizer with about ``vocab_size`` entries, and its words."""
    from gradience.models.vocabulary import build_tokenizer, build_vocabulary, wrap_tokenizer

    letters = string.ascii_lowercase
    words: list[str] = []
    for length in itertools.count(2):
        for chars in itertools.product(letters, repeat=length):
            words.append("".join(chars))
            if 2 * len(words) + 40 >= vocab_size:  # each word with and without a leading space
                break
        else:
            continue
        break
    vocabulary = build_vocabulary(["Question: Answer: " + " ".join(words)])
    tokenizer = wrap_tokenizer(build_tokenizer(vocabulary))
    tokenizer.model_max_length = 4096
    return tokenizer, words


def model_folder(folder: Path, shape: dict, tokenizer: Any) -> Path:
    """``config.json`` of a Mistral of ``shape`` (vocabulary: the tokenizer's) and the tokenizer."""
    from transformers import MistralConfig

    config = MistralConfig(
        **{**shape, "vocab_size": len(tokenizer)},
        max_position_embeddings=4096,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_model(folder: Path, device: Any, dtype: Any, attn: str, seed: int = 0) -> Any:
    """The folder's model with random weights, built in ``dtype`` on ``device`` (eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    return model.eval()


def random_loader(folder: Path, tokenizer: Any) -> Callable[[Any], tuple[Any, Any]]:
    """A ``model_loader`` for ``train_variant``: random weights on ``env.device`` in
    ``env.torch_dtype``, attention as ``model.attn_implementation``, and ``tokenizer``."""

    def load(cfg: Any) -> tuple[Any, Any]:
        from gradience.models import resolve_device, resolve_dtype

        device, dtype = resolve_device(cfg.env), resolve_dtype(cfg.env)
        attn = cfg.model.attn_implementation or "sdpa"
        return random_model(folder, device, dtype, attn), tokenizer

    return load


def gsm8k_like_task(words: list[str], n: int, max_len: int, seed: int = 0) -> Any:
    """``n`` training items of GSM8K-like token lengths (no eval items: no held-out loss)."""
    from gradience.tasks import Example, TaskData

    rng = random.Random(seed)
    items = []
    for i, length in enumerate(lora_model.gsm8k_lengths(n, max_len - 8, seed)):
        # template and specials take ~8 tokens: BOS, "Question", ":", "\n", "Answer", ":",
        # " ####"'s two pieces, the number and EOS
        prompt_words = max(4, round(PROMPT_SHARE * length) - 4)
        answer_words = max(2, length - prompt_words - 10)
        question = " ".join(rng.choice(words) for _ in range(prompt_words))
        answer = " ".join(rng.choice(words) for _ in range(answer_words)) + f" #### {i % 10}"
        items.append(Example(id=f"synthetic/train/{i}", question=question, answer=answer))
    return TaskData(train=items, eval=[], name="gsm8k")
