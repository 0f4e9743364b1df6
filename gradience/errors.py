"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class GradienceError(Exception):
    """A problem with the user's input: bad config, missing file, mismatched shapes.

    The message must name the file (and field, where there is one) and say what was expected.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.field = field
        where = ""
        if self.path is not None:
            where = self.path + (f": {field}" if field else "") + ": "
        elif field:
            where = f"{field}: "
        super().__init__(where + message)
