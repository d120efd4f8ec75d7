"""Named cost-model presets shipped with the package, and cost-model JSON files.

A preset is `sglang_fair/presets/<name>.json` in the format of `fit.save_model_json`:
`{"model": {...CostModel fields}, "fit": {...fit report}, "source": "how it was made"}`.
The GPU presets are fitted by benchmark/fit_profiles.py from Vidur's operator profiles; `cpu-tiny-llama` is a
placeholder prior for the embedded CPU test model. Anywhere a preset name is accepted, a path to such a JSON file
(e.g. a live run's own online fit) works too.
"""

from __future__ import annotations

from pathlib import Path

from .cost_model import CostModel
from .fit import load_model_json

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
ALIASES = {"cpu-embedded": "cpu-tiny-llama"}
"""Other names accepted for a preset (the embedded CPU model's prior is also called `cpu-embedded`)."""


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def preset_path(name_or_path: str | Path) -> Path:
    """The JSON file for a preset name, or the given path if it names an existing file."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            raise FileNotFoundError(f"cost-model file not found: {p}")
        return p
    candidate = PRESETS_DIR / f"{ALIASES.get(str(name_or_path), name_or_path)}.json"
    if not candidate.is_file():
        raise ValueError(f"unknown cost-model preset {str(name_or_path)!r}; known: {', '.join(preset_names())} "
                         "(or give a path to a .json file)")
    return candidate


def load_preset_doc(name_or_path: str | Path) -> dict:
    """The whole preset document (model, fit report, source)."""
    return load_model_json(preset_path(name_or_path))[1]


def load_preset(name_or_path: str | Path) -> CostModel:
    """A CostModel from a preset name (see preset_names()) or a cost-model JSON file path."""
    return load_model_json(preset_path(name_or_path))[0]


DEFAULT_PRESET = {"cpu": "cpu-embedded", "cuda": "h100-llama3-8b"}
"""The planner's starting preset per device kind when none is given."""
FALLBACK_PRIOR = CostModel(base_s=0.008, per_prefill_token_s=1.0e-4, per_attn_token2_s=3.0e-8,
                           per_decode_req_s=2.3e-3, per_context_token_s=1.0e-6)
"""Prior for a device kind without a preset: the embedded CPU model's shape; the online fit takes over."""


def load_cost_model(name_or_path: str | None, device: str = "cpu") -> tuple[CostModel, str]:
    """The starting cost model and where it came from: `name_or_path` (a preset name or a JSON path), else the
    device's default preset, else FALLBACK_PRIOR. RuntimeError when a named model cannot be loaded."""
    name = name_or_path or DEFAULT_PRESET.get(device.split(":")[0])
    if name is None:
        return FALLBACK_PRIOR, "builtin-fallback"
    try:
        return load_preset(name), str(name)
    except (KeyError, ValueError, OSError) as exc:
        raise RuntimeError(f"sglang-fair: cannot load cost model {name!r}: {exc}") from exc
