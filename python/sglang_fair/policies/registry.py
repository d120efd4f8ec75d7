"""Open policy registry: adding a policy is one new file plus `@register_policy("name")` (and its import in
`policies/__init__.py`). Import `make_policy` / `policy_names` from `sglang_fair.policies`, which registers the
built-in policies first."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

from ..core.types import Plan, Snapshot


class Policy(Protocol):
    name: str

    def plan(self, snap: Snapshot) -> Plan:
        """Pure and deterministic: the same snapshot gives the same plan; no clock, no I/O, no engine objects."""
        ...


_REGISTRY: dict[str, Callable[..., Policy]] = {}


def register_policy(name: str):
    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory
    return deco


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def policy_params(name: str) -> list[str]:
    """The parameter names a registered policy takes (its default instance's `params` dataclass fields)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    params = getattr(_REGISTRY[name](), "params", None)
    return [f.name for f in dataclasses.fields(params)] if dataclasses.is_dataclass(params) else []


def check_params(owner: str, params, known: list[str]) -> None:
    """Raise ValueError naming the parameters of `params` that `owner` does not take, and the ones it does."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} for "
                         f"{owner}; known: {', '.join(known) or 'none'}")


def make_policy(name: str, **params) -> Policy:
    """Build a registered policy; `params` are its config dataclass fields. An unknown policy or parameter raises
    ValueError naming it and the known ones; a bad value raises the policy's own ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    check_params(f"policy {name!r}", params, policy_params(name))
    return _REGISTRY[name](**params)
