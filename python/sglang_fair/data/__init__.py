"""Data shipped inside the package, read with `importlib.resources` (see NOTICE.md beside this file).

- `traces/`: the Azure LLM inference traces 2023 (code, conv; Microsoft Azure, CC-BY-4.0) and the ShareGPT length
  statistics (microsoft/sarathi-serve, Apache-2.0), gzip-compressed byte-for-byte copies of the public CSVs.
- `profiles/vidur/`: Vidur's GPU operator profiles (microsoft/vidur, MIT, LICENSE beside them), gzip-compressed.

`$SGLANG_FAIR_SHARED` (or a `shared` argument, `--shared` on the command line) points at a folder laid out like the
development reference (`<shared>/traces/<file>.csv`, `<shared>/profiles/vidur/...`) and replaces the shipped copies;
without it nothing outside the package is read.
"""

from __future__ import annotations

import gzip
import io
import os
from importlib.resources import files
from pathlib import Path
from typing import IO

SHARED_ENV = "SGLANG_FAIR_SHARED"

TRACE_FILES = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "sharegpt": "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
}
"""Trace name -> the public file's name (shipped as `<name>.gz`)."""


def shared_root(override: str | os.PathLike | None = None) -> Path | None:
    """The override folder: `override`, else $SGLANG_FAIR_SHARED, else None (use the shipped data)."""
    if override:
        return Path(override)
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else None


def _packaged(*parts: str) -> Path:
    return Path(str(files(__name__).joinpath(*parts)))


def trace_path(name: str, shared: str | os.PathLike | None = None) -> Path:
    """The file of a named trace: `<shared>/traces/<file>` with an override, else the shipped `<file>.gz`."""
    root = shared_root(shared)
    return root / "traces" / TRACE_FILES[name] if root else _packaged("traces", TRACE_FILES[name] + ".gz")


def profiles_dir(shared: str | os.PathLike | None = None) -> Path:
    """Vidur's profile folder: `<shared>/profiles/vidur` with an override, else the shipped copy."""
    root = shared_root(shared)
    return root / "profiles" / "vidur" if root else _packaged("profiles", "vidur")


def find_csv(folder: Path, name: str) -> Path:
    """`folder/name`, or its gzip copy `folder/name.gz`."""
    for p in (folder / name, folder / (name + ".gz")):
        if p.is_file():
            return p
    raise FileNotFoundError(f"no {name} (or {name}.gz) in {folder}")


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, gunzipping `*.gz` transparently (newline='' as the csv module wants)."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, newline="", encoding="utf-8")


def plain_name(path: str | os.PathLike) -> Path:
    """`x.csv.gz` -> `x.csv` (the name without the compression suffix)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix == ".gz" else path
