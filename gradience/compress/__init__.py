"""Compress a trained LoRA adapter to the ranks its audit supports, by exact SVD truncation.

``compress_adapter(dir, out, policy=...)`` picks each module's rank with a rank policy (as
``gradience suggest``); ``truncate_adapter(dir, ranks, out)`` takes the ranks as given. Both
write a PEFT adapter folder plus ``compress.json`` (:class:`gradience.results.CompressResult`).
The linear algebra is in :mod:`.truncate`, writing the folder in :mod:`.export`.
"""

from gradience.compress.core import compress_adapter, truncate_adapter

__all__ = ["compress_adapter", "truncate_adapter"]
