"""Built-in policies; each module registers itself by name. Import the registry from here:
`from sglang_fair.policies import make_policy, policy_names`."""

from . import fair, rad, sarathi, sglang_default, slai  # noqa: F401  (importing a policy module registers it)
from .registry import Policy, make_policy, policy_names, policy_params, register_policy

__all__ = ["Policy", "make_policy", "policy_names", "policy_params", "register_policy"]
