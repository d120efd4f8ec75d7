"""The emulated device's CPU attention (emulate/cpu_attention.py) computes what SGLang's torch_native backend
computes: same outputs on random KV caches, for decode batches, mixed extends (1-token rows with prompt chunks) and
grouped-query heads; cases it does not handle go to the original unchanged."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
backend = pytest.importorskip("sglang.srt.layers.attention.torch_native_backend")

from sglang_fair.emulate import cpu_attention as ca  # noqa: E402

ORIGINAL = backend.TorchNativeAttnBackend


def _caches(hq: int, hk: int, d: int = 16, pool: int = 4096, reqs: int = 6, width: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(pool, hk, d, generator=g)
    v = torch.randn(pool, hk, d, generator=g)
    table = torch.randperm(pool, generator=g)[: reqs * width].view(reqs, width)  # scattered slots, as a used pool
    return k, v, table.clone()


@pytest.mark.parametrize("hq,hk", [(1, 1), (4, 2), (4, 4)])
def test_decode_equals_sglang(hq, hk):
    k, v, table = _caches(hq, hk)
    lens = torch.tensor([1, 7, 130, 511, 64])
    slots = torch.tensor([3, 0, 5, 1, 2])
    q = torch.randn(len(lens), hq, k.shape[-1])
    want, got = torch.empty_like(q), torch.empty_like(q)
    ORIGINAL._run_sdpa_forward_decode(None, q, want, k, v, table, slots, lens, scaling=0.3, enable_gqa=hq != hk)
    ca.fast_decode(ORIGINAL._run_sdpa_forward_decode, None, q, got, k, v, table, slots, lens, scaling=0.3,
                   enable_gqa=hq != hk)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hq,hk", [(1, 1), (4, 2)])
def test_mixed_extend_equals_sglang(hq, hk):
    """A mixed forward: 1-token extends (running decodes) between prompt chunks with and without a prefix."""
    k, v, table = _caches(hq, hk)
    ext = torch.tensor([1, 40, 1, 1, 17, 1])
    pre = torch.tensor([300, 0, 12, 499, 100, 0])
    slots = torch.arange(6)
    q = torch.randn(int(ext.sum()), hq, k.shape[-1])
    args = (k, v, table, slots, pre + ext, pre, ext)
    kw = dict(scaling=None, enable_gqa=hq != hk, causal=True)
    want, got = torch.empty_like(q), torch.empty_like(q)
    ORIGINAL._run_sdpa_forward_extend(None, q, want, *args, **kw)
    ca.fast_extend(ORIGINAL._run_sdpa_forward_extend, None, q, got, *args, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unhandled_cases_call_the_original():
    calls = []

    def original(*a, **kw):
        calls.append(kw.get("sliding_window_size"))
        return "original"

    k, v, table = _caches(1, 1)
    q = torch.randn(2, 1, k.shape[-1])
    one = torch.tensor([1, 1])
    assert ca.fast_decode(original, None, q, q.clone(), k, v, table, torch.arange(2), one + 4,
                          sliding_window_size=8) == "original"
    assert ca.fast_extend(original, None, q, q.clone(), k, v, table, torch.arange(2), one + 4, one + 3, one,
                          causal=False) == "original"
    assert calls == [8, None]
