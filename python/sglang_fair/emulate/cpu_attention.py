"""Exact, cheaper CPU attention for emulated runs: SGLang's torch_native backend, without its wasted work.

SGLang 0.5.23's `TorchNativeAttnBackend` (the CPU's attention) runs one SDPA call per request, and in an extend
(prefill, or a MIXED forward that carries the running decodes as 1-token extends) it builds a query for the WHOLE
sequence, prefix included, and runs causal attention over all of it, then keeps the last rows. On the micro model
that made a decode row inside a mixed forward cost 4.6 ms at context 1000 and 49 ms at context 4000 (one layer),
against 0.14 ms per row for the emulated A100's whole decode step: emulated runs overran on exactly the forwards
fair batching forms. Measured by `benchmark/cpu_attention_bench.py`.

Under `--emulate-device` two AROUND hooks replace those two methods with the same mathematics done once:
- decode rows (a decode batch, and the 1-token extends of a mixed batch): one query against its context with
  `index_select` and two matmuls per row (`decode_rows`);
- longer extends (prompts, chunks) still go to SGLang's original, on those rows only: its redundant prefix queries
  cost little next to the emulated prefill time (an 8192-token prefill: 94-155 ms real against 722 ms emulated).
The outputs equal the original's to float rounding (`test/unit/test_emulate_cpu_attention.py` compares them on
random caches, GQA included). Cases this does not cover (sliding windows, encoder/cross attention, non-causal
extends) call SGLang's original. The padder still pads every forward to the emulated time: this only lowers the
real work under it, so fewer forwards overrun. Nothing here is used without an emulated device.
"""

from __future__ import annotations

import torch

TARGET = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
DECODE = TARGET + "._run_sdpa_forward_decode"
EXTEND = TARGET + "._run_sdpa_forward_extend"


def decode_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
                pool_idx: torch.Tensor, ctx_lens: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Attention of one query row per request over its whole context (keys 0..len-1): q [B, Hq, D] -> [B, Hq, Dv].

    A loop over rows of two `index_select`s and two small matmuls: on the 2-core machine 0.13-0.38 ms per row and
    layer at context 1000-4000, against 0.33-1.38 ms for SGLang's per-row SDPA. (Batching every row's keys into
    one gather and a segment softmax was slower, 0.77-4.2 ms per row: the temporaries are memory-bound here.)"""
    b, hq, d = q.shape
    hk, dv = k_cache.shape[1], v_cache.shape[-1]
    g = hq // hk
    scale = scaling if scaling is not None else d ** -0.5
    keys = k_cache.view(k_cache.shape[0], hk, d)
    vals = v_cache.view(v_cache.shape[0], hk, dv)
    out = q.new_empty((b, hq, dv))
    for i, (slot, n) in enumerate(zip(pool_idx.tolist(), ctx_lens.tolist())):
        tok = req_to_token[slot, :n]
        k = keys.index_select(0, tok).to(q.dtype).movedim(0, 1)  # [Hk, n, D]
        v = vals.index_select(0, tok).to(q.dtype).movedim(0, 1)  # [Hk, n, Dv]
        w = torch.softmax(torch.matmul(q[i].view(hk, g, d), k.transpose(1, 2)) * scale, dim=-1)  # [Hk, g, n]
        out[i] = torch.matmul(w, v).reshape(hq, dv)
    return out


def fast_decode(original, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                encoder_lens=None, scaling=None, enable_gqa=False, causal=False, is_cross_attn=False,
                sliding_window_size=None):
    """AROUND hook of `_run_sdpa_forward_decode` (same arguments)."""
    if encoder_lens is not None or is_cross_attn or (sliding_window_size is not None and sliding_window_size > -1):
        return original(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                        encoder_lens, scaling=scaling, enable_gqa=enable_gqa, causal=causal,
                        is_cross_attn=is_cross_attn, sliding_window_size=sliding_window_size)
    if seq_lens.numel():
        output[:] = decode_rows(query, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scaling)
    return output


def fast_extend(original, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                extend_prefix_lens, extend_seq_lens, encoder_lens=None, scaling=None, enable_gqa=False, causal=False,
                is_cross_attn=False, sliding_window_size=None):
    """AROUND hook of `_run_sdpa_forward_extend` (same arguments): the 1-token extends of a mixed batch as decode
    rows, the longer extends through the original."""
    ext = extend_seq_lens.to(torch.int64).cpu()
    ones = (ext == 1).nonzero().flatten()
    if (ones.numel() == 0 or not causal or encoder_lens is not None or is_cross_attn  # nothing of ours to do
            or (sliding_window_size is not None and sliding_window_size > -1)):
        return original(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                        extend_prefix_lens, extend_seq_lens, encoder_lens, scaling=scaling, enable_gqa=enable_gqa,
                        causal=causal, is_cross_attn=is_cross_attn, sliding_window_size=sliding_window_size)
    starts = torch.cumsum(ext, 0) - ext
    q_at = starts[ones]
    output[q_at] = decode_rows(query[q_at], k_cache, v_cache, req_to_token, req_pool_indices[ones],
                               extend_prefix_lens.to(torch.int64).cpu()[ones] + 1, scaling)
    longer = (ext > 1).nonzero().flatten()
    if longer.numel():  # prompts and chunks: SGLang's own SDPA (well under the emulated time), on those rows only
        q_rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + ext[i])) for i in longer.tolist()])
        part = output[q_rows]
        original(self, query[q_rows], part, k_cache, v_cache, req_to_token, req_pool_indices[longer],
                 seq_lens[longer], extend_prefix_lens[longer], extend_seq_lens[longer], None, scaling=scaling,
                 enable_gqa=enable_gqa, causal=causal, is_cross_attn=False, sliding_window_size=sliding_window_size)
        output[q_rows] = part
    return output


_registered: list[str] = []


def register() -> None:
    """Register both hooks (once per process); SGLang applies them with the other plugin hooks."""
    if _registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(DECODE, fast_decode, HookType.AROUND)
    HookRegistry.register(EXTEND, fast_extend, HookType.AROUND)
    _registered.extend([DECODE, EXTEND])
