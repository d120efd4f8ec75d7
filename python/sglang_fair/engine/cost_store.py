"""`--fair-save-cost-model PATH`: the scheduler's online cost-model fit, written where `--fair-cost-model PATH` (and
`core.presets.load_preset`) can read it back.

The file is rewritten after every accepted refit (the online fitter refits every `OnlineFitConfig.refit_every`
measured iterations, so at most once per that many forwards), atomically (temporary file + rename, so a reader or a
killed server never leaves half a file), and once more when the scheduler process exits normally. SGLang's
launcher stops its scheduler child with SIGKILL, so the last accepted refit is what survives a normal shutdown.
Pure Python: no SGLang imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.cost_model import CostModel
from ..core.fit import FitReport, save_model_json


def write_cost_model(path: str | os.PathLike, model: CostModel, report: FitReport | None, source: str) -> None:
    """Write `model` (and its fit report) to `path` atomically, in the format of `fit.save_model_json`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_model_json(tmp, model, report, source)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CostModelSaver:
    """Writes the fitter's model whenever it changed since the last write (call `maybe_save` after each observe)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.saves = 0
        self._saved: CostModel | None = None

    def maybe_save(self, fitter, *, force: bool = False) -> bool:
        """Write `fitter.model` if it is a newly accepted fit (or `force`); returns whether it wrote."""
        model = fitter.model
        if model is self._saved or (fitter.report is None and not force):
            return False
        source = (f"sglang-fair live online fit ({fitter.n_refits} refits, {fitter.n_samples} samples in the window, "
                  f"{fitter.n_rejected_fits} rejected)")
        write_cost_model(self.path, model, fitter.report, source)
        self._saved = model
        self.saves += 1
        return True
