"""Hooks that bring gradience into other tools' loops.

:class:`RankAuditCallback` is a ``transformers.TrainerCallback`` that audits a PEFT LoRA model
while it trains and logs rank use through the Trainer's own reporters
(:mod:`.trainer_callback`); :func:`audit_model` audits a model in memory (:mod:`.model_audit`).
"""

from gradience.integrations.model_audit import audit_model
from gradience.integrations.trainer_callback import DEFAULT_EVERY, RankAuditCallback

__all__ = ["DEFAULT_EVERY", "RankAuditCallback", "audit_model"]
