"""Config validation helpers shared by every component schema."""

from __future__ import annotations


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) when a user-supplied value is out of range."""
    if not condition:
        raise ValueError(message)
