"""Built-in policies; each module registers itself by name."""

import importlib

for _mod in ("sarathi", "fair", "slai"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as exc:  # a policy not written yet
        if exc.name != f"{__name__}.{_mod}":
            raise
