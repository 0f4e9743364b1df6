"""The LoRA spectral audit: how much of its rank does each module of an adapter really use?

``audit_adapter(dir)`` reads a PEFT adapter module by module and returns a
:class:`gradience.results.AuditResult`; the linear algebra is in :mod:`.spectrum`, the
metrics and policies in :mod:`gradience.ranks`, plots in :mod:`.plots` (matplotlib, lazy).
"""

from gradience.audit.core import audit_adapter
from gradience.ranks.policies import DEFAULT_POLICIES

__all__ = ["DEFAULT_POLICIES", "audit_adapter"]
