"""The base of every result model: extra keys allowed on read, a known ``schema_version``.

Kept apart from :mod:`gradience.results` so that the schema's sections in other files
(:mod:`gradience.results_tournament`) share it without importing ``results`` back.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 3
#: Versions this code reads.
SchemaVersion = Literal[1, 2, 3]


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class _Versioned(_Result):
    schema_version: SchemaVersion = SCHEMA_VERSION
