"""Checks the flag dataclasses share in their `__post_init__`: one wording for one mistake."""
from __future__ import annotations

from typing import Optional

from ..errors import UserError


def positive(flags, *names: str) -> None:
    """Each named field of `flags` that is set must be above 0 (`error: --name: must be positive`)."""
    for name in names:
        value = getattr(flags, name)
        if value is not None and not value > 0:
            raise UserError(f"must be positive, got {value}", f"--{name}")


def fraction(value: Optional[float], flag: str) -> None:
    """A probability threshold: strictly between 0 and 1."""
    if value is not None and not 0 < value < 1:
        raise UserError(f"must be in (0, 1), got {value}", flag)
