"""CPU-only placeholder for sgl-kernel (its CPU build is not published on PyPI).

SGLang 0.5.23 with SGLANG_USE_CPU_ENGINE=1 imports a few names from sgl_kernel at start-up; none of them is
called for a Llama model on a CPU without AMX. Imports succeed; calling any op raises NotImplementedError.
Installed only by patches/cpu-compat/install.sh; never on GPU machines.
"""

__version__ = "0.0.0+cpustub"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel CPU placeholder: {name} is not implemented")

    _missing.__name__ = name
    return _missing
