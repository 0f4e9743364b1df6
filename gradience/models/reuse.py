"""Keep one base model loaded across jobs: borrow it, wrap it in LoRA, give it back clean.

Loading Mistral-7B takes about a minute per job; the local executor runs a seed's jobs one
after another in one process, on the same base model. A :class:`BaseModelCache` loads it once
and lends it to each job. Giving it back removes the job's LoRA layers (``unload()``: the
original modules back in place, nothing merged), restores what PEFT and the Trainer changed
(``requires_grad``, train mode, ``use_cache``) and checks that the base weights are
bit-identical to the ones loaded (:func:`weights_fingerprint`). A model that fails a check, or
was never given back (its job raised in the middle of training), is dropped and the next job
loads afresh: reuse never changes a result, it only saves loads.

The switch is ``env.reuse_base_model`` (:func:`reuse_base_model`). The executor activates a
cache for the duration of a run (:func:`reusing_base_model`); jobs consult
:func:`active_cache`. The cache belongs to one process: workers in other processes (Ray's,
or parallel local workers) each hold their own or none.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gradience.config import ExperimentConfig, hash_data
from gradience.errors import GradienceError

Loader = Callable[[ExperimentConfig], "tuple[Any, Any]"]
_ACTIVE: BaseModelCache | None = None


def reuse_base_model(cfg: ExperimentConfig, executor: str) -> bool:
    """Whether a run with ``executor`` keeps its base model loaded across jobs.

    ``env.reuse_base_model`` null: yes with the local executor when it is safe, i.e. no
    ``model.device_map`` (accelerate's dispatch hooks) and no gradient checkpointing (which
    rewires the model's modules); true: insist (an error where it is not possible); false: no.
    Not on Ray: a GPU job runs in a fresh worker process (``max_calls=1``), so there is nothing
    to reuse, and a reused CPU worker takes whichever job Ray sends it next.
    """
    setting = cfg.env.reuse_base_model
    if setting is False:
        return False
    blocker = None
    if executor != "local":
        blocker = (
            f"the {executor} executor gives every GPU job a fresh worker process and keeps no "
            "model between jobs"
        )
    elif cfg.model.device_map is not None:
        blocker = "model.device_map places the model with accelerate hooks"
    elif cfg.train.gradient_checkpointing:
        blocker = "train.gradient_checkpointing rewires the model's modules"
    if blocker is not None and setting is True:
        raise GradienceError(
            f"the base model cannot be reused across jobs: {blocker}; set it to null or false",
            field="env.reuse_base_model",
        )
    return blocker is None


def base_model_key(cfg: ExperimentConfig) -> str:
    """Every setting that decides which weights ``load_model_and_tokenizer`` returns, and how."""
    env = cfg.env
    return hash_data(
        {
            "model": cfg.model.model_dump(mode="json"),
            "env": [env.device, env.torch_dtype, env.deterministic],
        }
    )


def weights_fingerprint(model: Any) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Per parameter and buffer: shape, dtype and the sum of its raw bits as integers.

    Cheap (one read of the weights, on their device) and sensitive to any change of any
    value, which is what giving a model back must rule out.
    """
    import torch

    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    prints = {}
    with torch.no_grad():
        for name, tensor in tensors.items():
            flat = tensor.detach()
            if flat.is_complex():
                flat = torch.view_as_real(flat)
            flat = flat.reshape(-1)
            if flat.dtype != torch.bool:
                flat = flat.view(bits[flat.element_size()])
            total = int(flat.sum(dtype=torch.int64).item()) if flat.numel() else 0
            prints[name] = (tuple(tensor.shape), str(tensor.dtype), total)
    return prints


@dataclass
class _Loaded:
    key: str
    model: Any
    tokenizer: Any
    fingerprint: dict[str, tuple[tuple[int, ...], str, int]]
    requires_grad: dict[str, bool]
    use_cache: Any


class BaseModelCache:
    """One base model lent to one job at a time (see the module docstring)."""

    def __init__(self, loader: Loader | None = None):
        from gradience.models import load_model_and_tokenizer

        self._loader = loader or load_model_and_tokenizer
        self._loaded: _Loaded | None = None
        self._lent = False
        #: Fresh loads so far (a run with reuse loads once unless a check failed).
        self.loads = 0

    def borrow(self, cfg: ExperimentConfig) -> tuple[Any, Any]:
        """The base model (eval mode) and a fresh copy of its tokenizer, as the loader gives them."""
        key = base_model_key(cfg)
        if self._loaded is not None and (self._lent or self._loaded.key != key):
            self.discard()  # never given back (its job raised), or another model
        if self._loaded is None:
            model, tokenizer = self._loader(cfg)
            self.loads += 1
            self._loaded = _Loaded(
                key=key,
                model=model,
                tokenizer=tokenizer,
                fingerprint=weights_fingerprint(model),
                requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
                use_cache=getattr(model.config, "use_cache", None),
            )
        self._lent = True
        # evaluation sets padding_side on the tokenizer it gets: each job gets its own copy
        return self._loaded.model, copy.deepcopy(self._loaded.tokenizer)

    def give_back(self, model: Any) -> None:
        """Take back the borrowed base model, or the PeftModel built on it, without its LoRA.

        A model that is not the one lent, or whose weights changed, is dropped (with a warning):
        the next job loads afresh.
        """
        loaded = self._loaded
        if loaded is None or not self._lent:
            return
        self._lent = False
        problem = self._restore(loaded, model)
        if problem is not None:
            warnings.warn(f"the base model is not reused for the next job: {problem}", stacklevel=2)
            self.discard()

    def _restore(self, loaded: _Loaded, model: Any) -> str | None:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = model.unload() if isinstance(model, PeftModel) else model
        if base is not loaded.model:
            return "the model given back is not the one lent"
        if any(isinstance(module, BaseTunerLayer) for module in base.modules()):
            return "LoRA layers are still in it"
        for name, parameter in base.named_parameters():
            parameter.requires_grad_(loaded.requires_grad.get(name, True))
        base.eval()
        if loaded.use_cache is not None:
            base.config.use_cache = loaded.use_cache
        if weights_fingerprint(base) != loaded.fingerprint:
            return "its weights differ from the ones loaded"
        return None

    def discard(self) -> None:
        """Drop the model (and free its memory, though it lived across jobs: gradience.heap)."""
        from gradience.models import release_memory

        if self._loaded is not None:
            self._loaded = None
            self._lent = False
            release_memory(everything=True)


@contextlib.contextmanager
def reusing_base_model(enabled: bool) -> Iterator[BaseModelCache | None]:
    """Within the block, :func:`active_cache` is a fresh cache (None when not ``enabled``)."""
    global _ACTIVE
    if not enabled:
        yield None
        return
    previous, cache = _ACTIVE, BaseModelCache()
    _ACTIVE = cache
    try:
        yield cache
    finally:
        _ACTIVE = previous
        cache.discard()


def active_cache() -> BaseModelCache | None:
    """The cache the running executor activated in this process, if any."""
    return _ACTIVE
