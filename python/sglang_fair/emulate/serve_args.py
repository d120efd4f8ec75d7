"""`sglang-fair serve --emulate-device PRESET[:DILATION] [--emulate-jitter-cv CV] [--emulate-seed N]
[--emulate-overlap on|off]`.

`split_emulate_args(argv)` takes our flags out of the command line before anything else parses it and returns an
`EmulatedServe` (or None without `--emulate-device`); it works with every `--fair-policy`, `off` included. The
emulated server is SGLang's real server on the CPU with:
  - the device spec in the server's environment (`hook.ENV_VAR`): the padder makes every forward last as long as
    the emulated GPU's (`pad.py`);
  - `--max-total-tokens` = the emulated GPU's KV pool for Llama-3-8B (`device.kv_pool_tokens`, about 425k tokens on
    80 GB), `--chunked-prefill-size 8192` (SGLang's default on an 80 GB GPU) and `--disable-overlap-schedule`
    (the padder needs the forward inside run_batch), each only where the user gave none; the GPU's overlap loop is
    emulated by the padder instead (`--emulate-overlap on`, the default; `off` adds the host time between forwards
    to every iteration, as the emulation did before);
  - for `fair`/`slai` without `--fair-cost-model`, the planner's starting cost model is the emulated GPU's preset
    (fitted by benchmark/fit_profiles.py to the same profiles) x the dilation (`with_planner_prior`), not the CPU
    model's prior; the online fit then follows the measured (emulated) iteration times;
  - the active policy's time-valued parameters (fields ending in `_ms`: fair's `min_budget_ms`, `max_budget_ms`)
    x the dilation where the user set none (`with_dilated_policy_times`), as the bench scales the SLOs: they are
    device time, so on a k-times slower clock fair's 1 s budget cap is k seconds (a `--fair-param` value the user
    gives is taken as server-clock milliseconds, like the SLO flags);
  - without `--model-path`, the micro model (`MICRO_SPEC`: 2 layers, hidden 64, random weights, the embedded
    model's tokenizer): its real forward is small enough to fit inside most emulated iterations, and its KV cache
    (1 KiB per token in float32) makes a 425k-token pool 0.4 GB. A larger model may need --max-total-tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import RuntimeConfig
from ..data.model import TinyLlamaSpec
from ..core.checks import FieldError
from .spec import DeviceSpec, kv_pool_tokens, parse_device_spec
from .hook import ENV_VAR, spec_to_env

FLAG, JITTER_FLAG, SEED_FLAG = "--emulate-device", "--emulate-jitter-cv", "--emulate-seed"
OVERLAP_FLAG = "--emulate-overlap"
OVERLAP_VALUES = {"on": True, "off": False}
MICRO_SPEC = TinyLlamaSpec(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=1,
                           num_key_value_heads=1)
"""The micro model for emulated runs: 2 layers, hidden 64 (one head of 64), the embedded model's tokenizer and
context (8192, as Llama-3-8B)."""
EMULATED_GPU_CHUNKED_PREFILL = 8192


def _take(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    out, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(f"{flag} expects a value")
            value = argv[i + 1]
            i += 2
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


@dataclass(frozen=True)
class EmulatedServe:
    spec: DeviceSpec

    def sglang_args(self, args: list[str]) -> list[str]:
        """`args` plus the emulated GPU's server flags the user did not give (model: the micro model)."""
        out = list(args)
        if not (_given(out, "--model-path") or _given(out, "--model")):
            from ..data.model import make_model
            out += ["--model-path", str(make_model(MICRO_SPEC))]
        for flag, value in (("--max-total-tokens", str(kv_pool_tokens())),
                            ("--chunked-prefill-size", str(EMULATED_GPU_CHUNKED_PREFILL)),
                            ("--disable-overlap-schedule", None)):
            if not _given(out, flag):
                out += [flag] if value is None else [flag, value]
        return out

    def with_planner_prior(self, argv: list[str], folder: Path | None = None) -> list[str]:
        """`argv` (our flags) plus `--fair-cost-model FILE` where none is given: the device's preset with every
        coefficient x the dilation, written to `folder` (default: beside the cached models)."""
        if _given(argv, "--fair-cost-model"):
            return list(argv)
        from ..core.fit import save_model_json
        from ..core.presets import load_preset
        from ..data.model import default_cache_dir

        k = self.spec.dilation
        folder = Path(folder) if folder is not None else default_cache_dir().parent / "emulated"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.spec.preset}-x{k:g}.json"
        save_model_json(path, load_preset(self.spec.preset).scaled(k),
                        source=f"the {self.spec.preset} preset x {k:g} (dilation of the emulated device "
                               f"{self.spec.text()}), written by sglang-fair serve --emulate-device")
        return [*argv, "--fair-cost-model", str(path)]

    def with_dilated_policy_times(self, cfg: RuntimeConfig) -> RuntimeConfig:
        """`cfg` with each time-valued parameter of its active policy (a field ending in `_ms`) set to its default
        x the dilation, where the user set none."""
        k = self.spec.dilation
        if not cfg.active or k == 1.0:
            return cfg
        scaled = dilated_policy_times(cfg.policy, k, given=cfg.policy_params)
        return dataclasses.replace(cfg, policy_params={**cfg.policy_params, **scaled}) if scaled else cfg

    def env(self) -> dict[str, str]:
        return {ENV_VAR: spec_to_env(self.spec)}

    def banner(self) -> str:
        return (f"sglang-fair serve: EMULATED device {self.spec.text()} (Vidur profiles; every forward padded to "
                f"the emulated time; jitter cv {self.spec.jitter_cv:g}; overlap loop emulated: "
                f"{'on' if self.spec.overlap else 'off'})")


def dilated_policy_times(policy: str, k: float, given=()) -> dict[str, float]:
    """Each time-valued parameter of `policy` (a field ending in `_ms`) not in `given`: its default x `k`, as an
    emulated server with dilation k runs it (and as a simulator replay on that server's clock must)."""
    from ..policies import make_policy

    params = getattr(make_policy(policy), "params", None)
    if params is None or not dataclasses.is_dataclass(params) or k == 1.0:
        return {}
    return {f.name: getattr(params, f.name) * k for f in dataclasses.fields(params)
            if f.name.endswith("_ms") and f.name not in given}


def split_emulate_args(argv: list[str]) -> tuple[list[str], EmulatedServe | None]:
    """(argv without our flags, EmulatedServe or None). ValueError names the flag at fault."""
    argv, text = _take(list(argv), FLAG)
    argv, cv = _take(argv, JITTER_FLAG)
    argv, seed = _take(argv, SEED_FLAG)
    argv, overlap = _take(argv, OVERLAP_FLAG)
    if text is None:
        extra = [f for f, v in ((JITTER_FLAG, cv), (SEED_FLAG, seed), (OVERLAP_FLAG, overlap)) if v is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} need {FLAG}")
        return argv, None
    try:
        jitter = float(cv) if cv is not None else 0.0
    except ValueError:
        raise ValueError(f"{JITTER_FLAG} must be a number, got {cv!r}") from None
    try:
        seed_n = int(seed) if seed is not None else 0
    except ValueError:
        raise ValueError(f"{SEED_FLAG} must be an integer, got {seed!r}") from None
    if overlap is not None and overlap not in OVERLAP_VALUES:
        raise ValueError(f"{OVERLAP_FLAG} must be on or off, got {overlap!r}")
    try:
        spec = parse_device_spec(text, jitter_cv=jitter, seed=seed_n, overlap=OVERLAP_VALUES[overlap or "on"])
    except FieldError as exc:  # the fields a flag of ours sets
        raise ValueError(f"{JITTER_FLAG} {exc.problem}") from None
    except ValueError as exc:
        raise ValueError(f"{FLAG}: {exc}") from None
    return argv, EmulatedServe(spec)
