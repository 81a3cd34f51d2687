# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Memory-lean kernel of the (relative-position) axial attention: softmax over summed logit terms and the weighted sums
of values and value embeddings, computed in chunks of sequences, with a hand-written backward that recomputes the
attention map instead of storing it.

For sequences ``n``, query positions ``i`` and key positions ``j``::

    S[n, i, j]   = q1[n, i] . k[n, j] + q2[n, i] . rq[:, i, j] + k3[n, j] . wk[:, i, j]
    A            = softmax_j(S)
    sv[n, i]     = sum_j A[n, i, j] v[n, j]
    sve[n, i, c] = sum_j A[n, i, j] rv[c, i, j]

The batch-norm scales of the three logit terms are folded into ``q1``, ``q2`` and ``k3`` by the caller (their shifts
cancel in the softmax), so the three (N, L, L) terms are never stored. Working on chunks of a few MB keeps every
intermediate in cache and avoids re-faulting large fresh allocations, which dominates the plain formulation on CPUs.
"""

from __future__ import annotations

import torch

__all__ = ["relative_attention", "RelativeAttentionFunction", "chunk_rows"]

# bytes of one (rows, L, L) float32 logit chunk on the CPU; measured best on a 2-core Zen 3 between 1 and 4 MB
CPU_CHUNK_BYTES = 2 * 2**20


def chunk_rows(num_rows: int, length: int, device: torch.device, chunk_bytes: int) -> int:
    """Sequences per chunk: everything at once on accelerators, ``chunk_bytes`` of logits per chunk on the CPU."""
    if device.type != "cpu":
        return num_rows
    return max(1, min(num_rows, chunk_bytes // (4 * length * length)))


def _batched(x: torch.Tensor) -> bool:
    """
    Whether the logits and the value-embedding gradient use batched matrix products (accelerators) rather than one
    broadcast pass over the (N, L, L) map per channel (the CPU, where the channel counts of 1-8 favour broadcasting;
    on accelerators each pass is a kernel launch and a full read and write of the map).
    """
    return x.device.type != "cpu"


def _logits(
    q1: torch.Tensor, k: torch.Tensor, q2: torch.Tensor, rq: torch.Tensor, k3: torch.Tensor, wk: torch.Tensor,
    positional: bool,
) -> torch.Tensor:
    if _batched(q1):
        s = torch.bmm(q1, k.transpose(1, 2))
        if positional:
            # q2[n, i] . rq[:, i, j] batched over i; k3[n, j] . wk[:, i, j] batched over j
            s += torch.matmul(q2.transpose(0, 1), rq.transpose(0, 1)).transpose(0, 1)
            s += torch.matmul(k3.transpose(0, 1), wk.permute(2, 0, 1)).permute(1, 2, 0)
        return s
    # outer products per channel
    s = q1[:, :, None, 0] * k[:, None, :, 0]
    for c in range(1, q1.shape[-1]):
        s.addcmul_(q1[:, :, None, c], k[:, None, :, c])
    if positional:
        for c in range(q2.shape[-1]):
            s.addcmul_(q2[:, :, c : c + 1], rq[c])
            s.addcmul_(k3[:, None, :, c], wk[c])
    return s


def _value_embedding(a: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
    """out[n, i, c] = sum_j a[n, i, j] rv[c, i, j], as one matmul batched over i."""
    return torch.matmul(a.transpose(0, 1), rv.permute(1, 2, 0)).transpose(0, 1)


def relative_attention(
    q1: torch.Tensor,
    k: torch.Tensor,
    q2: torch.Tensor,
    rq: torch.Tensor,
    k3: torch.Tensor,
    wk: torch.Tensor,
    v: torch.Tensor,
    rv: torch.Tensor,
    positional: bool,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Chunked forward with ordinary differentiable ops (used for inference, TorchScript, tracing and compilation).

    Args:
        q1, k: (N, L, dq) content query (scaled) and key.
        q2, k3: (N, L, dq) query and key for the position terms (scaled); ignored unless ``positional``.
        rq, wk: (dq, L, L) gathered query / key position embeddings, indexed [c, i, j].
        v: (N, L, dv) values.
        rv: (dv, L, L) gathered value embeddings; ignored unless ``positional``.
        positional: whether the position terms are present.
        rows: sequences per chunk.

    Returns:
        sv (N, L, dv) and sve (N, L, dv) (zeros-free empty (N, L, 0) tensor when not positional).
    """
    n = q1.shape[0]
    sv_parts: list[torch.Tensor] = []
    sve_parts: list[torch.Tensor] = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        a = torch.softmax(
            _logits(q1[start:stop], k[start:stop], q2[start:stop], rq, k3[start:stop], wk, positional), dim=-1
        )
        sv_parts.append(torch.bmm(a, v[start:stop]))
        if positional:
            sve_parts.append(_value_embedding(a, rv))
    sv = torch.cat(sv_parts, 0) if len(sv_parts) > 1 else sv_parts[0]
    if not positional:
        return sv, v.new_zeros((n, v.shape[1], 0))
    sve = torch.cat(sve_parts, 0) if len(sve_parts) > 1 else sve_parts[0]
    return sv, sve


class RelativeAttentionFunction(torch.autograd.Function):
    """Autograd function of :func:`relative_attention` that saves only its inputs and outputs (no (N, L, L) maps)."""

    @staticmethod
    def forward(ctx, q1, k, q2, rq, k3, wk, v, rv, positional: bool, rows: int):  # type: ignore[override]
        with torch.no_grad():
            sv, sve = relative_attention(q1, k, q2, rq, k3, wk, v, rv, positional, rows)
        ctx.save_for_backward(q1, k, q2, rq, k3, wk, v, rv, sv, sve)
        ctx.positional = positional
        ctx.rows = rows
        return sv, sve

    @staticmethod
    def backward(ctx, dsv, dsve):  # type: ignore[override]
        q1, k, q2, rq, k3, wk, v, rv, sv, sve = ctx.saved_tensors
        positional, rows = ctx.positional, ctx.rows
        n = q1.shape[0]
        dsv = dsv.contiguous()
        # softmax backward needs sum_j A dA per row, which equals dsv . sv + dsve . sve
        delta = (dsv * sv).sum(-1, keepdim=True)
        if positional:
            dsve = dsve.contiguous()
            delta = delta + (dsve * sve).sum(-1, keepdim=True)
        if rows >= n:  # one chunk (accelerators): no output buffers to fill, fewer kernel launches
            grads = _chunk_backward(q1, k, q2, rq, k3, wk, v, rv, dsv, dsve, delta, positional)
        else:
            grads = _chunked_backward(q1, k, q2, rq, k3, wk, v, rv, dsv, dsve, delta, positional, rows)
        dq1, dk, dv, dq2, drq, dk3, dwk, drv = grads
        return dq1, dk, dq2, drq, dk3, dwk, dv, drv, None, None


def _chunk_backward(q1, k, q2, rq, k3, wk, v, rv, dsv, dsve, delta, positional: bool):
    """
    Gradients of one chunk of sequences: (dq1, dk, dv, dq2, drq, dk3, dwk, drv), the last five None unless
    ``positional``; ``delta`` is the chunk's sum_j A dA per row.
    """
    a = torch.softmax(_logits(q1, k, q2, rq, k3, wk, positional), dim=-1)
    da = torch.bmm(dsv, v.transpose(1, 2))
    drv = None
    if positional:
        if _batched(da):  # da[n, i, j] += dsve[n, i] . rv[:, i, j], batched over i
            da += torch.matmul(dsve.transpose(0, 1), rv.transpose(0, 1)).transpose(0, 1)
        else:
            for c in range(rv.shape[0]):
                da.addcmul_(dsve[:, :, c : c + 1], rv[c])
        # drv[c, i, j] = sum_n a[n, i, j] dsve[n, i, c]
        drv = torch.matmul(dsve.permute(1, 2, 0), a.transpose(0, 1)).permute(1, 0, 2)
    dv = torch.bmm(a.transpose(1, 2), dsv)
    ds = da.sub_(delta).mul_(a)  # softmax backward, in place
    ds_t = ds.transpose(1, 2)
    dq1 = torch.bmm(ds, k)
    dk = torch.bmm(ds_t, q1)
    if not positional:
        return dq1, dk, dv, None, None, None, None, None
    dq2 = _value_embedding(ds, rq)
    ds_t = ds_t.contiguous()
    dk3 = _value_embedding(ds_t, wk.transpose(1, 2))
    drq = torch.matmul(q2.permute(1, 2, 0), ds.transpose(0, 1)).permute(1, 0, 2)
    dwk = torch.matmul(k3.permute(1, 2, 0), ds_t.transpose(0, 1)).permute(1, 2, 0)
    return dq1, dk, dv, dq2, drq, dk3, dwk, drv


def _chunked_backward(q1, k, q2, rq, k3, wk, v, rv, dsv, dsve, delta, positional: bool, rows: int):
    """:func:`_chunk_backward` over chunks of ``rows`` sequences (the CPU's cache-sized chunks)."""
    n = q1.shape[0]
    grads = [torch.empty_like(q1), torch.empty_like(k), torch.empty_like(v)]
    if positional:
        grads += [torch.empty_like(q2), torch.zeros_like(rq), torch.empty_like(k3), torch.zeros_like(wk)]
        grads += [torch.zeros_like(rv)]
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        chunk = _chunk_backward(
            q1[sl], k[sl], q2[sl], rq, k3[sl], wk, v[sl], rv, dsv[sl], dsve[sl] if positional else dsve, delta[sl],
            positional,
        )
        for index, grad in enumerate(chunk[: len(grads)]):
            if index in (4, 6, 7):  # the tables' gradients sum over all sequences
                grads[index] += grad
            else:
                grads[index][sl] = grad
    return tuple(grads) + (None,) * (8 - len(grads))
