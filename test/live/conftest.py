"""Shared set-up of the live tests, as session fixtures: the `sglang-fair serve` command, the embedded model, the
plugin environment for plain `python -m sglang.launch_server`, and greedy /generate calls. The helpers themselves live
in the package (`sglang_fair.live`), where the benchmarks use them too; module-level helpers of a test file import
them from there."""

from __future__ import annotations

import pytest

from sglang_fair.live.compare import generate, post_generate, prompt_ids as _prompt_ids
from sglang_fair.live.server import SERVE_COMMAND, embedded_model_path


def _fair_env(policy: str = "fair", slo=None, **params) -> dict:
    """`SGLANG_FAIR_CONFIG` for `python -m sglang.launch_server` (how the tests reach policy parameters `serve`
    refuses, such as the chaos testing aid)."""
    from sglang_fair.config import RuntimeConfig, SloConfig
    return RuntimeConfig(policy=policy, policy_params=params, slo=slo or SloConfig()).to_env()


@pytest.fixture(scope="session")
def serve_command() -> list[str]:
    return list(SERVE_COMMAND)


@pytest.fixture(scope="session")
def model_path() -> str:
    return embedded_model_path()


@pytest.fixture(scope="session")
def fair_env():
    return _fair_env


@pytest.fixture(scope="session")
def prompt_ids():
    return _prompt_ids


@pytest.fixture(scope="session")
def generate_ok():
    """(url, input_ids, max_new, *, custom_params=None, rid=None, timeout_s=600) -> response body; raises on HTTP
    errors."""
    return generate


@pytest.fixture(scope="session")
def generate_raw():
    """Like `generate_ok`, returning the raw response (a test may expect an error status)."""
    return post_generate
