"""`fair`'s `tpot_margin`: the envelope holds back a fraction of each TPOT SLO, so short outputs survive an
iteration that runs a little longer than planned."""

from __future__ import annotations

import pytest
from factories import make_req, make_running, make_snapshot

from sglang_fair.core.metrics import tpot_s
from sglang_fair.policies import make_policy
from sglang_fair.policies.fair import FairParams
from sglang_fair.sim.engine import EngineConfig, simulate

NOW = 50.0


def test_the_envelope_and_the_budget_use_the_held_back_tpot():
    # first token 0.5 s ago, 10 outputs: the 11th is due at first + 10 x TPOT = now + 0.5 (now + 0.4 with 10% held
    # back); its last token 10 ms ago, so the gap guard (5 TPOTs) allows 0.49 s (0.44 s).
    d = make_running("d", arrival_s=NOW - 2.0, output_tokens=10, first_token_s=NOW - 0.5, last_token_s=NOW - 0.01,
                     tpot_slo_s=0.1, max_new_tokens=100)
    snap = make_snapshot(now=NOW, running=[d], waiting=[make_req("w", arrival_s=NOW, prompt_tokens=20000)])
    assert make_policy("fair", tpot_margin=0.0).plan(snap).budget_s == pytest.approx(0.49)
    assert make_policy("fair", tpot_margin=0.1).plan(snap).budget_s == pytest.approx(0.4)
    # the default holds back 2%: due at now + 0.5 - 10 x 2 ms = now + 0.48, the gap bound 5 x 98 ms after the last
    # token (also now + 0.48)
    assert make_policy("fair").plan(snap).budget_s == pytest.approx(0.48)


def test_on_the_emulated_device_short_outputs_no_longer_end_just_over_the_slo():
    """The planner's preset against the emulated A100's model (4-8% slower on the mixed batches fair runs, cheaper
    on small ones; docs/results.md): the headroom's quantile cannot cover every shape, and without a margin short
    outputs end just over their TPOT SLO with no token left to win it back."""
    from sglang_fair.core.presets import load_preset
    from sglang_fair.emulate.device import DeviceModel, parse_device_spec
    from sglang_fair.sim.traces import load_trace

    cost = load_preset("a100-llama3-8b")
    device = DeviceModel(parse_device_spec("a100-llama3-8b")).iteration_s
    trace = load_trace("azure-code", duration_s=300).scaled(0.05)

    def over(margin):
        res = simulate(trace, make_policy("fair", tpot_margin=margin), cost, EngineConfig(), iteration_time=device)
        late = [r for r in res.records if r.n_outputs > 1 and tpot_s(r) > 0.1]
        return len(late), max((tpot_s(r) for r in late), default=0.0)

    (plain, worst), (kept, _) = over(0.0), over(0.01)
    assert plain >= 5 and worst < 0.102 and kept == 0  # misses by under 2%, all gone with 1% held back


@pytest.mark.parametrize("bad", [-0.01, 0.5, True, "0.1"])
def test_tpot_margin_must_be_a_fraction_below_a_half(bad):
    with pytest.raises(ValueError, match="tpot_margin"):
        FairParams(tpot_margin=bad)
