"""encode_example: labels mask exactly the prompt, EOS ends the completion, nothing is cut."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, trainers
from transformers import PreTrainedTokenizerFast

from gradience.config import TaskConfig
from gradience.models.embedded import embedded_tokenizer
from gradience.tasks import IGNORE_INDEX, build_completion, build_prompt, encode_example, load_task

TASK = TaskConfig(name="arithmetic", generated_train_size=50, generated_eval_size=10)


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


def _split(encoded: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    labels, ids = encoded["labels"], encoded["input_ids"]
    n_prompt = sum(label == IGNORE_INDEX for label in labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # masked positions are one prefix
    assert labels[n_prompt:] == ids[n_prompt:]
    return ids[:n_prompt], ids[n_prompt:]


def test_labels_mask_exactly_the_prompt(tokenizer) -> None:
    for example in load_task(TASK).train[:20]:
        prompt, completion = build_prompt(TASK, example), build_completion(example)
        encoded = encode_example(tokenizer, prompt, completion, max_seq_length=256)
        assert encoded is not None
        prompt_ids, completion_ids = _split(encoded)
        assert tokenizer.decode(prompt_ids) == tokenizer.bos_token + prompt
        assert tokenizer.decode(completion_ids) == completion + tokenizer.eos_token
        assert completion_ids[-1] == tokenizer.eos_token_id
        assert encoded["attention_mask"] == [1] * len(encoded["input_ids"])
        # Evaluation conditions on the prompt tokenized alone: training must see the same ids.
        assert prompt_ids == tokenizer(prompt)["input_ids"]


def test_too_long_examples_are_dropped_not_cut(tokenizer) -> None:
    example = load_task(TASK).train[0]
    prompt, completion = build_prompt(TASK, example), build_completion(example)
    length = len(encode_example(tokenizer, prompt, completion, max_seq_length=256)["input_ids"])
    assert encode_example(tokenizer, prompt, completion, max_seq_length=length) is not None
    assert encode_example(tokenizer, prompt, completion, max_seq_length=length - 1) is None


def _boundary_merging_tokenizer() -> PreTrainedTokenizerFast:
    """A real BPE without pre-tokenization: it learns merges like ': 1' across the boundary."""
    texts = [f"Question: what is {i}?\nAnswer: {i}+{i}={2 * i}" for i in range(1, 60)] * 5
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="</s>")


def test_prompt_tokens_survive_a_tokenizer_that_merges_across_the_boundary() -> None:
    tokenizer = _boundary_merging_tokenizer()
    prompt, completion = "Question: what is 7?\nAnswer:", " 7+7=14"
    joint = tokenizer(prompt + completion)["input_ids"]
    alone = tokenizer(prompt)["input_ids"]
    assert joint[: len(alone)] != alone, "fixture must merge across the prompt/completion boundary"
    encoded = encode_example(tokenizer, prompt, completion, max_seq_length=64)
    prompt_ids, completion_ids = _split(encoded)
    assert prompt_ids == alone
    assert tokenizer.decode(completion_ids).replace(" ", "") == (completion + "</s>").replace(
        " ", ""
    )
    assert completion_ids[-1] == tokenizer.eos_token_id
