"""gradience: how much LoRA rank does each module really use?

Stages (one package each, data flowing one way):
config -> train(probe) -> audit -> ranks -> train(variants) -> evaluate
-> experiment (aggregate) -> stats -> report.
"""

__version__ = "0.1.0"
