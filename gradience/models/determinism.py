"""``env.deterministic``: ask torch for deterministic kernels wherever the run executes.

Applied when a job loads its model (:func:`gradience.models.load_model_and_tokenizer`), so it
holds in Ray workers as in the local process. Like torch's own switch it stays on for the rest
of the process. On CPU, gradience's runs are bit-identical without it (the tests hold this);
on CUDA it is what makes two runs on the same GPU model and software stack give the same bits.
"""

from __future__ import annotations

import os

from gradience.config import EnvConfig

#: cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); ":16:8" also works.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def apply_determinism(env: EnvConfig) -> bool:
    """Turn on deterministic kernels if ``env.deterministic``; return whether it did."""
    if not env.deterministic:
        return False
    import torch

    # Read by cuBLAS when it creates its handle (the first matmul on a GPU): set it before.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different kernel per run
    return True
