"""Built-in policies; each module registers itself by name."""

from . import fair, sarathi, slai  # noqa: F401

__all__ = ["fair", "sarathi", "slai"]
