"""The embedded CPU model: tokenizer round trip, random init, the content-hashed cache."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch

from gradience.config import ExperimentConfig, TaskConfig
from gradience.errors import GradienceError
from gradience.models import embedded, load_model_and_tokenizer
from gradience.models.corpus import corpus_texts
from gradience.models.embedded import (
    DEFAULT_RECIPE,
    RECIPE_FILE,
    cached_model_dir,
    pretrained_model,
)
from gradience.tasks import build_completion, build_prompt, load_task

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY_RECIPE = dataclasses.replace(DEFAULT_RECIPE, steps=3, batch_size=4, warmup_steps=1)


def _cfg(name: str = "embedded:tiny-mistral-random", dtype: str = "float32") -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": name},
            "task": {"name": "arithmetic"},
            "env": {"device": "cpu", "torch_dtype": dtype},
        }
    )


@pytest.fixture(scope="module")
def random_model_and_tokenizer():
    return load_model_and_tokenizer(_cfg())


def test_tokenizer_round_trips_every_task_and_corpus_text(random_model_and_tokenizer) -> None:
    _, tokenizer = random_model_and_tokenizer
    task = TaskConfig(name="arithmetic", generated_train_size=400, generated_eval_size=100)
    data = load_task(task)
    corpus = corpus_texts(seed=0)
    texts = [build_prompt(task, e) + build_completion(e) for e in data.train + data.eval]
    texts += [next(corpus) for _ in range(300)]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Digits are single tokens, so arithmetic is learnable digit by digit.
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]
    assert tokenizer.decode(tokenizer("What is 7?")["input_ids"][1:]) == "What is 7?"
    assert tokenizer.unk_token_id in tokenizer("Ω")["input_ids"]


def test_random_model_is_a_small_seeded_mistral(random_model_and_tokenizer) -> None:
    model, tokenizer = random_model_and_tokenizer
    assert type(model).__name__ == "MistralForCausalLM"
    names = {name for name, _ in model.named_modules()}
    assert {f"model.layers.3.self_attn.{p}" for p in PROJECTIONS[:4]} <= names
    assert {f"model.layers.0.mlp.{p}" for p in PROJECTIONS[4:]} <= names
    # Grouped-query attention like Mistral-7B: k/v project to half the width of q.
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.out_features * 2 == attention.q_proj.out_features == 128
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 0.8e6  # ~0.6 M (MLP 256)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    again, _ = load_model_and_tokenizer(_cfg())
    for (name, p), (_, q) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_loading_does_not_disturb_the_callers_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model_and_tokenizer(_cfg())
    assert torch.equal(torch.rand(3), expected)


def test_dtype_from_env_is_applied() -> None:
    model, _ = load_model_and_tokenizer(_cfg(dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_embedded_name_is_a_config_error() -> None:
    with pytest.raises(
        GradienceError, match="model.name: unknown embedded model 'embedded:tiny-llama'"
    ):
        load_model_and_tokenizer(_cfg(name="embedded:tiny-llama"))


def test_pretraining_writes_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path))
    folder = cached_model_dir(TINY_RECIPE)
    assert folder.parent == tmp_path / "models" and folder.name.startswith("tiny-mistral-")
    assert cached_model_dir(dataclasses.replace(TINY_RECIPE, steps=4)) != folder
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")  # a killed run's leftovers

    trained, tokenizer = pretrained_model(TINY_RECIPE, progress=False)
    assert {"config.json", "model.safetensors", "tokenizer.json", RECIPE_FILE} <= {
        p.name for p in folder.iterdir()
    }
    assert [p.name for p in tmp_path.joinpath("models").iterdir() if p.is_dir()] == [folder.name]
    assert type(trained).__name__ == "MistralForCausalLM"
    initial, _ = embedded.random_model(TINY_RECIPE)
    changed = [
        n for n, p in trained.state_dict().items() if not torch.equal(p, initial.state_dict()[n])
    ]
    assert changed, "pre-training must change the weights"

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached model was pre-trained again")

    monkeypatch.setattr(embedded, "_train_and_save", must_not_train)
    cached, cached_tokenizer = pretrained_model(TINY_RECIPE, progress=False)
    for name, p in trained.state_dict().items():
        assert torch.equal(p, cached.state_dict()[name]), name
    text = "Question: Tom has 3 apples.\nAnswer: 3+4=7 #### 7"
    assert cached_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert cached_tokenizer.pad_token == tokenizer.pad_token


def test_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be", encoding="utf-8")
    monkeypatch.setenv("GRADIENCE_CACHE", str(not_a_folder))
    with pytest.raises(GradienceError, match="set GRADIENCE_CACHE to a writable folder"):
        pretrained_model(TINY_RECIPE, progress=False)


def test_default_model_ships_with_the_package_and_loads_without_pretraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = embedded.shipped_model_dir(DEFAULT_RECIPE)
    record = json.loads((shipped / RECIPE_FILE).read_text(encoding="utf-8"))
    assert record["recipe"] == json.loads(json.dumps(dataclasses.asdict(DEFAULT_RECIPE))), (
        "the shipped model was trained with another recipe: regenerate it (embedded.py docstring)"
    )
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path))

    def must_not_train(*args, **kwargs):
        raise AssertionError("the shipped model was not used")

    monkeypatch.setattr(embedded, "_train_and_save", must_not_train)
    model, tokenizer = pretrained_model(progress=False)
    assert not any(tmp_path.iterdir()), "loading the shipped model must not write the cache"

    # It is pre-trained: arithmetic text is far more predictable to it than to the random init.
    random_model, _ = embedded.random_model()
    texts = list(itertools.islice(corpus_texts(seed=99), 16))  # unseen draws of its corpus
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        trained_loss = model(**batch, labels=labels).loss.item()
        random_loss = random_model(**batch, labels=labels).loss.item()
    assert trained_loss < 0.3 * random_loss
