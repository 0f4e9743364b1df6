"""Pre-flight numbers: the GPU memory of the largest training job and the disk the adapters take.

Estimated before anything is trained, from the model's configuration (its module tree on the
``meta`` device, :func:`gradience.models.skeleton.model_skeleton`: no weights read) and the
run's settings. Everything here is arithmetic on a :class:`ModelShape`; measuring free memory
and disk is :mod:`gradience.experiment.preflight`'s job.

**Memory of one training job**, the probe (every module at ``lora.probe_r``: variants' ranks
are capped at it, so the probe is the largest job):

* weights: base parameters × bytes of ``env.torch_dtype`` (frozen: no gradient, no optimizer
  state);
* LoRA: trainable parameters × 16 B (fp32 weight, gradient and Adam's two moments; PEFT keeps
  adapters in fp32 under a bf16/fp16 base);
* activations at the longest batch: ``b × s × h × L × F × a`` bytes (b the per-device batch,
  s = ``task.max_seq_length``, h the hidden size, L the layers, a the bytes of an activation
  element, F the per-layer factor below), plus ``3 × b × s × h × a`` outside the layers
  (embedding output, final norm input and output). With gradient checkpointing only each
  layer's input is kept and one layer at a time is recomputed: ``b × s × h × (L + F) × a``;
* logits: ``b × s × V × 12`` bytes: the fp32 log-softmax the loss keeps, and at the start of
  backward its gradient and that of the fp32 logits (4 B each);
* a reserve of 1 GiB for the CUDA context and cuBLAS workspaces, which the allocator does not
  see.

**The per-layer factor F**: elements of width h that one decoder layer keeps per token for
backward, derived for a Llama/Mistral layer (RMSNorm, grouped-query attention through an
sdpa/flash kernel that keeps no s×s scores, gated SiLU MLP, frozen projections, which keep no
input since they need no weight gradient). With i = intermediate/h and g = key-value width/h:

* ``6 + 2g``: norm input and output, q and k after RoPE, v, the attention output, and the
  post-attention norm's input and output;
* ``4i``: the gate and up outputs, SiLU(gate) and their product (the down projection's input);
* ``c × Σ d_in/h`` over the layer's adapted modules: each LoRA branch keeps its own copy of its
  input when the adapter's dtype differs from the activations' (PEFT casts the input to fp32,
  autocast casts it back: a new bf16 tensor per module) or when ``lora.lora_dropout`` > 0 (the
  dropped-out input): c = 1, plus 1/a for dropout's 1-byte mask; c = 0 otherwise;
* ``2 × heads × s / h`` with ``attn_implementation: eager`` (scores and probabilities).

Mistral-7B at the flagship's settings (i = 3.5, g = 0.25, all 7 projections: Σ d_in/h = 9.5,
dropout 0.1, bf16): F = 20.5 + 9.5 × 1.5 = 34.75, so 8 × 512 tokens need ≈ 35 GiB of
activations without checkpointing and ≈ 2 GiB with it. On CPU the activation terms are
checked against the bytes autograd really saves (``tests/test_experiment_resources.py``).

**Disk**: every trained variant of every seed writes one adapter of at most the probe's size,
in fp32 (an upper bound: compressed variants are smaller); with ``train.save_steps``, the
running job's checkpoint (LoRA weights and Adam moments, 12 B per parameter) twice over, as
the Trainer writes the new checkpoint before it removes the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradience.errors import GradienceError
from gradience.ranks.suggest import lora_params

GIB = 1024**3
#: fp32 LoRA weight + gradient + Adam's exp_avg and exp_avg_sq.
LORA_TRAINING_BYTES = 16
#: PEFT saves adapters in their own dtype, fp32.
ADAPTER_BYTES = 4
#: A checkpoint holds the adapter and Adam's two moments.
CHECKPOINT_BYTES = 12
#: fp32 log-softmax kept for backward, plus its gradient and the fp32 logits' gradient.
LOGITS_BYTES = 12
#: CUDA context and library workspaces, outside the caching allocator.
CUDA_RESERVE = 1 * GIB
#: Embedding output, final norm input and output: kept once, not per layer.
OUTSIDE_LAYERS = 3
#: Bytes of dropout's boolean mask per element.
MASK_BYTES = 1


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need of an architecture, read from its meta-device module tree."""

    base_params: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    kv_width: int
    num_heads: int
    vocab_size: int
    lora_shapes: Mapping[str, tuple[int, int]]  # adapted module -> (d_in, d_out)

    def lora_params(self, rank: int) -> int:
        """Trainable LoRA parameters with ``rank`` on every adapted module."""
        return lora_params(dict.fromkeys(self.lora_shapes, rank), self.lora_shapes)


def shape_of(skeleton: Any, lora_shapes: Mapping[str, tuple[int, int]]) -> ModelShape:
    """The :class:`ModelShape` of a (meta-device) model and the shapes of its adapted modules."""
    config = skeleton.config.get_text_config()
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        base_params=sum(p.numel() for p in skeleton.parameters()),  # tied weights once
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        intermediate_size=int(config.intermediate_size),
        kv_width=int(getattr(config, "num_key_value_heads", None) or heads) * int(head_dim),
        num_heads=heads,
        vocab_size=int(config.vocab_size),
        lora_shapes=dict(lora_shapes),
    )


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of device memory one training job needs, by part."""

    weights: int
    lora_state: int
    activations: int
    logits: int
    reserve: int
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.lora_state + self.activations + self.logits + self.reserve

    def describe(self) -> str:
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return (
            f"{gib(self.total)} (weights {gib(self.weights)}, LoRA + Adam {gib(self.lora_state)}, "
            f"activations {gib(self.activations)} with gradient checkpointing {checkpointing}, "
            f"logits {gib(self.logits)}"
            + (f", CUDA reserve {gib(self.reserve)})" if self.reserve else ")")
        )


def layer_factor(
    shape: ModelShape,
    *,
    seq_len: int,
    activation_bytes: int,
    lora_dropout: float,
    mixed_precision: bool,
    eager_attention: bool = False,
) -> float:
    """F: elements of width h one decoder layer keeps per token for backward (module docstring)."""
    h = shape.hidden_size
    factor = 6 + 2 * shape.kv_width / h + 4 * shape.intermediate_size / h
    if shape.lora_shapes:
        lora_inputs = sum(d_in for d_in, _ in shape.lora_shapes.values()) / h / shape.num_layers
        copies = (1.0 if mixed_precision or lora_dropout > 0 else 0.0) + (
            MASK_BYTES / activation_bytes if lora_dropout > 0 else 0.0
        )
        factor += copies * lora_inputs
    if eager_attention:
        factor += 2 * shape.num_heads * seq_len / h
    return factor


def training_memory(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    lora_rank: int,
    weight_bytes: int,
    lora_dropout: float,
    gradient_checkpointing: bool,
    eager_attention: bool = False,
    reserve: int = CUDA_RESERVE,
) -> TrainingMemory:
    """Memory of a training step at the longest batch (``batch_size`` × ``seq_len`` tokens).

    ``reserve``: CUDA_RESERVE for a CUDA device, 0 where there is no CUDA context (CPU).
    """
    tokens = batch_size * seq_len
    factor = layer_factor(
        shape,
        seq_len=seq_len,
        activation_bytes=weight_bytes,
        lora_dropout=lora_dropout,
        mixed_precision=weight_bytes != ADAPTER_BYTES,
        eager_attention=eager_attention,
    )
    layers = shape.num_layers + factor if gradient_checkpointing else shape.num_layers * factor
    per_token = shape.hidden_size * weight_bytes * (layers + OUTSIDE_LAYERS)
    return TrainingMemory(
        weights=shape.base_params * weight_bytes,
        lora_state=shape.lora_params(lora_rank) * LORA_TRAINING_BYTES,
        activations=round(tokens * per_token),
        logits=tokens * shape.vocab_size * LOGITS_BYTES,
        reserve=reserve,
        gradient_checkpointing=gradient_checkpointing,
    )


@dataclass(frozen=True)
class AdapterDisk:
    """Bytes of disk the run's adapters (and the running job's checkpoint) take at most."""

    adapters: int
    per_adapter: int
    checkpoints: int

    @property
    def total(self) -> int:
        return self.adapters * self.per_adapter + self.checkpoints

    def describe(self) -> str:
        return (
            f"{gib(self.total)} (at most {self.adapters} adapter(s) x {gib(self.per_adapter)}"
            + (f", checkpoints {gib(self.checkpoints)}" if self.checkpoints else "")
            + ")"
        )


def adapter_disk(
    shape: ModelShape, *, lora_rank: int, adapters: int, checkpoints: bool
) -> AdapterDisk:
    """Disk for ``adapters`` adapters of at most ``lora_rank`` on every module (module docstring)."""
    params = shape.lora_params(lora_rank)
    return AdapterDisk(
        adapters=adapters,
        per_adapter=params * ADAPTER_BYTES,
        checkpoints=2 * params * CHECKPOINT_BYTES if checkpoints else 0,
    )


def check_fits(
    memory: TrainingMemory,
    free_memory: int | None,
    disk: AdapterDisk,
    free_disk: int,
    *,
    config_path: str | None = None,
    where: str = "the GPU",
) -> None:
    """Raise GradienceError, with the numbers, when the job or the adapters will not fit.

    ``free_memory`` None skips the memory check (a CPU run, or a model spread over devices).
    """
    if free_memory is not None and memory.total > free_memory:
        advice = "lower train.per_device_train_batch_size or task.max_seq_length"
        if not memory.gradient_checkpointing:
            advice += ", or set train.gradient_checkpointing: true"
        raise GradienceError(
            f"the largest training job needs ~{memory.describe()} but {where} has "
            f"{gib(free_memory)} free: {advice}",
            path=config_path,
            field="train.per_device_train_batch_size",
        )
    if disk.total > free_disk:
        raise GradienceError(
            f"the adapters need ~{disk.describe()} but the output folder's disk has "
            f"{gib(free_disk)} free: free some space or choose another env.output_base_dir",
            path=config_path,
            field="env.output_base_dir",
        )


def gib(n: int) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"
