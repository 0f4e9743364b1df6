"""The embedded CPU default: a ~1 M-parameter Mistral-architecture model, no network needed.

Which option, and why. gradience's ``make demo`` must run offline on 2 CPU cores in a few
minutes and still give the mechanism test real signal (probe accuracy well inside 10–90%).
Three options were measured (``shared/notes/cpu-demo-feasibility.md``):

* **A (chosen): a small Mistral base pre-trained once and shipped.** Same architecture and
  module names as Mistral-7B (GQA, SwiGLU MLP, 7 projections per block), so every code
  path of the flagship run (rank patterns, audit names, shapes) is exercised, at ~0.6 M
  parameters (hidden 128, MLP 256, 4 layers). The corpus (:mod:`gradience.models.corpus`)
  teaches arithmetic and the task's own word problems answered as ``a+b=c #### c``, but
  never the ``Question: ... Answer:`` frame of the fine-tuning prompts: without LoRA the
  base continues the question instead of answering (5% exact match on the demo's items),
  LoRA learns the frame within ~60 steps, and accuracy then rises slowly towards what the
  base's arithmetic can do. Measured (experiments/README.md, "The demo's setting", LoRA
  r=16 on all 7 projections, rsLoRA alpha 8, batch 8, lr 6e-4 cosine, 500 eval items, 5
  seeds): the probe scores 0.58 after 60 steps, 0.62 after 100 and 0.64 after 150, with
  every variant's seed sd <= 0.02 (<= 0.01 at 150); the demo trains 150 steps. The same
  base pre-trained 3x longer computes the arithmetic itself: LoRA then only learns the
  frame and every variant sits at 0.98-0.99, the ceiling. Two other shapes were pre-trained the same way:
  MLP 512 (the earlier default, ~1 M parameters) and 3 layers of MLP 512 reach 0.87-0.96,
  too close to the ceiling for differences to show.
  Earlier corpora (arithmetic and narrative statements only) left the frame, the operand
  copying and the ``####`` repeat to LoRA: 250+ steps of batch 32 on a learning cliff,
  with 5-10 points of seed-to-seed spread in the compressed variants.
* B: a random frozen base + LoRA learns addition only on a steep curve (variant 68 ± 16%).
* C: SmolLM2-135M (a real pretrained model, 93 MB download-free wheel): still on the steep
  part of its curve at CPU budgets (variants differ by 20–45 points); an optional preset,
  not a default.

The cache lives under ``$GRADIENCE_CACHE/models/tiny-mistral-<hash>/`` (default
``~/.cache/gradience``), where ``<hash>`` is a content hash of the :class:`PretrainRecipe`
and the vocabulary, so changing either retrains and an unchanged recipe loads in well under
a second. It is an ordinary ``save_pretrained`` folder, loadable by transformers directly
(``model.name: <that folder>``). It is written to a temporary folder and renamed into
place, under a file lock, so concurrent workers (Ray) pre-train once and never see half a
model. ``embedded:tiny-mistral-random`` is the same architecture and tokenizer with a fixed
random init (``torch.manual_seed(0)``) and no pre-training, for fast tests.

The default recipe's result also ships inside the package (``gradience/models/assets/``,
2.5 MB, the same folder the cache would hold), so a fresh clone's ``make demo`` skips the
~5 min pre-training (2000 steps, one torch thread: the same bits on any machine); any
other recipe is trained and cached as above. After changing the
default recipe, regenerate the shipped folder (the test suite fails until you do)::

    GRADIENCE_CACHE=$(mktemp -d) python -c "from gradience.models.embedded import pretrained_model; pretrained_model()"
    # then replace gradience/models/assets/tiny-mistral-* by $GRADIENCE_CACHE/models/tiny-mistral-*
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gradience.config import hash_data
from gradience.errors import GradienceError
from gradience.io import cache_root
from gradience.models.corpus import vocabulary_texts
from gradience.models.vocabulary import (
    BOS,
    EOS,
    PAD,
    build_tokenizer,
    build_vocabulary,
    wrap_tokenizer,
)
from gradience.tasks.arithmetic import template_texts

PRETRAINED_NAME = "embedded:tiny-mistral"
RANDOM_NAME = "embedded:tiny-mistral-random"
EMBEDDED_NAMES = (PRETRAINED_NAME, RANDOM_NAME)
RECIPE_FILE = "gradience_recipe.json"
#: Pre-trained folders shipped with the package, named like the cache's.
SHIPPED_MODELS = Path(__file__).parent / "assets"
_PROMPT_TEXTS = ["Question: What is it?\nAnswer: 1+2=3 #### 3"]


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pre-trained embedded model (its hash keys the cache).

    ``corpus_revision`` must be bumped whenever the corpus generator's text changes.
    """

    hidden_size: int = 128
    intermediate_size: int = 256  # 512 (~1 M parameters) makes the demo's task too easy
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    steps: int = 2000
    batch_size: int = 32
    block_len: int = 64
    learning_rate: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    corpus_revision: int = 5

    def cache_key(self, vocabulary: list[str]) -> str:
        return hash_data({"recipe": asdict(self), "vocabulary": vocabulary})


DEFAULT_RECIPE = PretrainRecipe()


def embedded_vocabulary() -> list[str]:
    return build_vocabulary(template_texts() + vocabulary_texts() + _PROMPT_TEXTS)


def embedded_tokenizer() -> Any:
    """The embedded models' tokenizer (transformers ``PreTrainedTokenizerFast``)."""
    return wrap_tokenizer(build_tokenizer(embedded_vocabulary()))


def mistral_config(recipe: PretrainRecipe, tokenizer: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        sliding_window=None,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )


def random_model(recipe: PretrainRecipe = DEFAULT_RECIPE) -> tuple[Any, Any]:
    """(model, tokenizer) with the embedded architecture and a fixed random init."""
    from transformers import MistralForCausalLM

    tokenizer = embedded_tokenizer()
    with _fork_rng():
        torch.manual_seed(0)
        model = MistralForCausalLM(mistral_config(recipe, tokenizer))
    model.eval()
    return model, tokenizer


def pretrained_model(
    recipe: PretrainRecipe = DEFAULT_RECIPE, *, progress: bool = True
) -> tuple[Any, Any]:
    """(model, tokenizer) of the pre-trained embedded model, training and caching it on first use."""
    from transformers import AutoTokenizer, MistralForCausalLM

    folder = shipped_model_dir(recipe)
    if not (folder / RECIPE_FILE).is_file():
        folder = cached_model_dir(recipe)
    if not (folder / RECIPE_FILE).is_file():
        try:
            with _cache_lock(folder.parent / f".{folder.name}.lock"):
                if not (folder / RECIPE_FILE).is_file():  # another process may have finished it
                    _train_and_save(recipe, folder, progress=progress)
        except OSError as exc:  # read-only, not a folder, disk full: the user's environment
            raise GradienceError(
                f"cannot write the embedded model cache ({exc.strerror or exc}); set GRADIENCE_CACHE "
                "to a writable folder",
                path=folder,
            ) from None
    model = MistralForCausalLM.from_pretrained(folder)  # saved in float32; env dtype applied later
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def model_folder_name(recipe: PretrainRecipe = DEFAULT_RECIPE) -> str:
    return f"tiny-mistral-{recipe.cache_key(embedded_vocabulary())}"


def cached_model_dir(recipe: PretrainRecipe = DEFAULT_RECIPE) -> Path:
    return cache_root() / "models" / model_folder_name(recipe)


def shipped_model_dir(recipe: PretrainRecipe = DEFAULT_RECIPE) -> Path:
    """Where the package ships the pre-trained model of ``recipe`` (present for the default)."""
    return SHIPPED_MODELS / model_folder_name(recipe)


def _train_and_save(recipe: PretrainRecipe, folder: Path, *, progress: bool) -> None:
    from gradience.models.pretrain import packed_blocks, pretrain

    model, tokenizer = random_model(recipe)
    blocks = packed_blocks(
        tokenizer, recipe.steps * recipe.batch_size, recipe.block_len, recipe.seed
    )
    print(
        f"gradience: pre-training the embedded model once ({recipe.steps} steps, ~5 min for "
        f"the default recipe); cached at {folder}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    threads = torch.get_num_threads()
    with _progress_bar(recipe.steps, enabled=progress) as on_step, _fork_rng():
        # One thread: the same bits on any machine's core count (matrices this small gain
        # little from more), so the shipped model is exactly what the recipe rebuilds.
        torch.set_num_threads(1)
        torch.manual_seed(recipe.seed)
        final_loss = pretrain(
            model,
            blocks,
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            betas=recipe.betas,
            weight_decay=recipe.weight_decay,
            warmup_steps=recipe.warmup_steps,
            min_lr_ratio=recipe.min_lr_ratio,
            max_grad_norm=recipe.max_grad_norm,
            seed=recipe.seed,
            on_step=on_step,
        )
        torch.set_num_threads(threads)
    record = {
        "recipe": asdict(recipe),
        "final_loss": final_loss,
        "wall_time_s": time.perf_counter() - started,
    }
    _save_atomically(model, tokenizer, folder, record)


def _save_atomically(model: Any, tokenizer: Any, folder: Path, record: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Written last: its presence marks a complete model.
        (staging / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if folder.exists():  # a stale, incomplete folder from a killed run
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _cache_lock(lock_path: Path):
    """An exclusive lock across processes (POSIX); elsewhere, no lock (rename keeps it atomic)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _fork_rng():
    """Seed locally without disturbing the caller's torch RNG (training seeds stay theirs)."""
    with torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def _progress_bar(total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc="pre-training embedded model",
        unit="step",
        disable=not enabled,
        file=sys.stderr,
    )

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    try:
        yield on_step
    finally:
        bar.close()


def load_embedded(name: str, recipe: PretrainRecipe = DEFAULT_RECIPE) -> tuple[Any, Any]:
    """(model, tokenizer) for an ``embedded:`` model name."""
    if name == PRETRAINED_NAME:
        return pretrained_model(recipe)
    if name == RANDOM_NAME:
        return random_model(recipe)
    from gradience.errors import GradienceError

    raise GradienceError(
        f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_NAMES)}", field="model.name"
    )
