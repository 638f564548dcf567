"""The output modes' names (`output.mode`), apart from what each does (modes.py), so that the
command line can offer them without loading the storage layer."""

from __future__ import annotations

from enum import StrEnum


class OutputMode(StrEnum):
    """What a run does with what its output location already holds (`output.mode`)."""

    ERROR_IF_EXISTS = "error_if_exists"
    OVERWRITE = "overwrite"
    RESUME = "resume"
    RETRY_ERRORS = "retry_errors"
