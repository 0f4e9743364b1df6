"""Will a server apply an adapter's update as PEFT trained it? (``gradience check``)

``check_serving(dir)`` reads an adapter folder's config and tensor shapes and returns a
:class:`gradience.results_serving.ServingCheck`: per module, whether the config describes the
stored tensors and, per server (PEFT, vLLM, SGLang, LoRAX), the scaling it applies, the
relative error of the served ΔW, the ``max_lora_rank`` it needs and the parameters it holds
after padding. Each server's rule is read from its source, cited in :mod:`.rules`,
:mod:`.sglang` and :mod:`.lorax`; reading the folder is :mod:`.layout`, the text
report :mod:`.table`.
"""

from gradience.serving.check import SERVERS, check_serving

__all__ = ["SERVERS", "check_serving"]
