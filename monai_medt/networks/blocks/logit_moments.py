# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Batch moments of the axial-attention logit maps, computed from the small tensors that produce them.

For query / key channels ``q[r, g, i]``, ``k[r, g, j]`` (``r`` sequences per head, ``g`` heads, ``i, j`` positions) and
the gathered position embeddings ``rq[:, i, j]``, ``wk[:, i, j]``, the three logit terms of a head are::

    content         X[r, i, j] = q[r, i] . k[r, j]
    query-position  X[r, i, j] = q[r, i] . rq[:, i, j]
    key-position    X[r, i, j] = k[r, j] . wk[:, i, j]

Their means and mean squares over ``(r, i, j)`` (what a training-mode batch norm of the maps needs) follow from sums,
Gram matrices and per-position second moments of ``q`` and ``k``, without the ``(R, L, L)`` maps. They are computed in
float64: the variance is the difference of two such sums. The backward is written out: the plain autograd graph of
these products is a few dozen batched matmuls of 1-8 channels and strided gradient sums, which cost more than the
forward. On the CPU the sums over q and k and their gradient are single passes of the fused kernel (``moment_sums``,
``moment_grad``), which read float32 inputs and accumulate in float64; the batched matmuls of the PyTorch form cost
about a tenth of a MedT train step there. The batch norm's training scale ``weight / sqrt(var + eps)`` of each term and
head follows from the moments (:func:`logit_norm_scale`), with its backward written out as well.
"""

from __future__ import annotations

import torch

from monai_medt.networks.blocks.cpu_kernel import cpu_kernel

__all__ = [
    "LogitMomentsFunction",
    "LogitNormScaleFunction",
    "MapLogitMomentsFunction",
    "logit_moments",
    "logit_moments_reference",
    "logit_norm_scale",
    "logit_norm_scale_reference",
    "map_logit_moments",
]


def _second_moments(x: torch.Tensor) -> torch.Tensor:
    """sum_r x x^T per head and position: (R, G, L, c) -> (G, L, c, c)."""
    xp = x.permute(1, 2, 3, 0).contiguous()
    return torch.matmul(xp, xp.transpose(2, 3))


def _table_gram(table: torch.Tensor, axis: int) -> torch.Tensor:
    """sum over the other position of t t^T per position along ``axis`` (1 or 2) of a (c, L, L) table: (L, c, c)."""
    t = table.permute(axis, 0, 3 - axis)  # (L_axis, c, L_other)
    return torch.matmul(t, t.transpose(1, 2))


def logit_moments_reference(
    q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor | None, wk: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The same moments as :func:`logit_moments` with ordinary differentiable ops (TorchScript and tests use it).

    Args:
        q, k: (R, G, L, c) query and key channels.
        rq, wk: (c, L, L) query / key position embeddings indexed [c, i, j], or both None for the content term only.

    Returns:
        means and mean squares, each (terms, G) float64, terms being 3 (content, query-, key-position) or 1.
    """
    r, _, length, _ = q.shape
    count = r * length * length
    qd, kd = q.double(), k.double()
    # content: sum_ij q_i.k_j = (sum_i q).(sum_j k); sum_ij (q_i.k_j)^2 = <q^T q, k^T k> per sequence and head
    means = [(qd.sum(2) * kd.sum(2)).sum((0, 2))]
    squares = [(torch.matmul(qd.transpose(2, 3), qd) * torch.matmul(kd.transpose(2, 3), kd)).sum((0, 2, 3))]
    if rq is not None and wk is not None:
        rqd, wkd = rq.double(), wk.double()
        # query-position: moments from sum_r q q^T (per head and i) and sum_j rq rq^T (per i)
        means.append((qd.sum(0) * rqd.sum(2).t()).sum((1, 2)))
        squares.append((_second_moments(qd) * _table_gram(rqd, 1)).sum((1, 2, 3)))
        # key-position: the same with k, j and wk
        means.append((kd.sum(0) * wkd.sum(1).t()).sum((1, 2)))
        squares.append((_second_moments(kd) * _table_gram(wkd, 2)).sum((1, 2, 3)))
    return torch.stack(means) / count, torch.stack(squares) / count


def _kernel_for(x: torch.Tensor):
    """The compiled CPU kernel where it takes ``x`` (a float32 or float64 CPU tensor), else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return cpu_kernel()


def _sums(x: torch.Tensor, per_position: bool) -> list[torch.Tensor | None]:
    """
    Float64 sums of x (R, G, L, c): over positions per sequence and head, of x (R, G, c) and x x^T (R, G, c, c), and
    where ``per_position``, over sequences per head and position, of x (G, L, c) and x x^T (G, L, c, c) (else None).
    """
    kernel = _kernel_for(x)
    if kernel is not None:
        return list(kernel.moment_sums(x, per_position))
    xd = x.flatten(0, 1).double() if x.dim() == 5 else x.double()
    sums = [xd.sum(2), torch.matmul(xd.transpose(2, 3), xd)]
    if not per_position:
        return sums + [None, None]
    return sums + [xd.sum(0), _second_moments(xd)]


def _gradient(
    x: torch.Tensor,
    mat: torch.Tensor,
    pos: torch.Tensor | None,
    lin: torch.Tensor,
    lin_pos: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    (mat[r, g] + pos[g, i]) @ x[r, g, i] + lin[r, g] + lin_pos[g, i] in x's dtype, computed in float64: the moments'
    gradient with respect to q or k. mat (R, G, c, c) and pos (G, L, c, c) symmetric, lin (R, G, c), lin_pos (G, L, c);
    pos and lin_pos None for the content term alone. x may be (R, G, L, c) or (B, O, G, L, c) (see :func:`_sums`);
    written into ``out`` (x's shape, any strides) where given, else into a new tensor.
    """
    kernel = _kernel_for(x)
    if kernel is not None:
        empty = mat.new_empty(0)
        pos = empty if pos is None else pos.contiguous()
        lin_pos = empty if lin_pos is None else lin_pos.contiguous()
        return kernel.moment_grad(x, mat.contiguous(), pos, lin.contiguous(), lin_pos, empty if out is None else out)
    xd = x.flatten(0, 1).double() if x.dim() == 5 else x.double()
    grad = _apply_symmetric(xd, mat, pos).add_(lin[:, :, None])
    if lin_pos is not None:
        grad.add_(lin_pos[None])
    grad = grad.view(x.shape).to(x.dtype)
    return grad if out is None else out.copy_(grad)


def _apply_symmetric(x: torch.Tensor, per_sequence: torch.Tensor, per_position: torch.Tensor | None) -> torch.Tensor:
    """
    out[r, g, i] = (per_sequence[r, g] + per_position[g, i]) @ x[r, g, i] for symmetric (c, c) blocks. The
    per-sequence term is one batched product (x @ M = M @ x for symmetric M); the per-position term, batched over
    (g, i) with the R sequences as rows, needs x in another layout, which only pays from 4 channels on: below that it
    is one broadcast multiply-add per channel.
    """
    out = torch.matmul(x, per_sequence)
    if per_position is None:
        return out
    r, g, length, c = x.shape
    if c >= 4:
        rows = x.permute(1, 2, 0, 3).reshape(g * length, r, c)
        term = torch.bmm(rows, per_position.reshape(g * length, c, c)).view(g, length, r, c)
        return out.add_(term.permute(2, 0, 1, 3))
    for b in range(c):
        out.addcmul_(per_position[None, :, :, :, b], x[..., b : b + 1])
    return out


def _moments(q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor | None, wk: torch.Tensor | None):
    """
    Means and mean squares (terms, G) of the logit terms of q, k ((R, G, L, c), or (B, O, G, L, c) with R = B O) and
    the tables, and the sums that :func:`_coefficients` needs.
    """
    groups, length = q.shape[-3], q.shape[-2]
    count = q.numel() // (groups * q.shape[-1]) * length  # R L L
    positional = rq is not None and wk is not None
    qsum, gram_q, q_pos, mom_q = _sums(q, positional)  # (R, G, c), (R, G, c, c), (G, L, c), (G, L, c, c)
    ksum, gram_k, k_pos, mom_k = _sums(k, positional)
    means = [(qsum * ksum).sum((0, 2))]
    squares = [(gram_q * gram_k).sum((0, 2, 3))]
    saved = [qsum, ksum, gram_q, gram_k]
    if positional:
        rqd, wkd = rq.double(), wk.double()
        rq_sum, wk_sum = rqd.sum(2), wkd.sum(1)  # (c, L_i), (c, L_j)
        gram_rq, gram_wk = _table_gram(rqd, 1), _table_gram(wkd, 2)  # (L, c, c)
        means += [(q_pos * rq_sum.t()).sum((1, 2)), (k_pos * wk_sum.t()).sum((1, 2))]
        squares += [(mom_q * gram_rq).sum((1, 2, 3)), (mom_k * gram_wk).sum((1, 2, 3))]
        saved += [rqd, wkd, rq_sum, wk_sum, q_pos, k_pos, mom_q, mom_k, gram_rq, gram_wk]
    moments = torch.stack(means + squares).div_(count)  # one op for both (each op is a kernel launch on accelerators)
    return moments[: len(means)], moments[len(means) :], saved, count


def _coefficients(saved: list[torch.Tensor], grad_means: torch.Tensor, grad_squares: torch.Tensor, count: int):
    """
    The backward of :func:`_moments`: the arguments of :func:`_gradient` for q and for k (mat, pos, lin, lin_pos),
    and the float64 gradients of the tables (None without them).
    """
    qsum, ksum, gram_q, gram_k, *pos = saved
    gm = grad_means.double() / count  # (terms, G)
    gs = 2.0 * grad_squares.double() / count  # d(x^T M x) = 2 M x for symmetric M
    mat_q = gs[0].view(1, -1, 1, 1) * gram_k  # d/dq of the content square, per sequence
    mat_k = gs[0].view(1, -1, 1, 1) * gram_q
    lin_q = gm[0].view(1, -1, 1) * ksum  # (R, G, c)
    lin_k = gm[0].view(1, -1, 1) * qsum
    if not pos:
        return (mat_q, None, lin_q, None), (mat_k, None, lin_k, None), None, None
    rqd, wkd, rq_sum, wk_sum, q_pos, k_pos, mom_q, mom_k, gram_rq, gram_wk = pos
    pos_q = gs[1].view(-1, 1, 1, 1) * gram_rq  # (G, L, c, c): d/dq of the query-position square
    pos_k = gs[2].view(-1, 1, 1, 1) * gram_wk
    q_args = (mat_q, pos_q, lin_q, gm[1].view(-1, 1, 1) * rq_sum.t())
    k_args = (mat_k, pos_k, lin_k, gm[2].view(-1, 1, 1) * wk_sum.t())
    # tables: the means give sum_g gm[g] q_pos[g, i, c] along j; the squares 2 (sum_g gs[g] mom[g, i]) @ rq[:, i, j]
    m_q = (gs[1].view(-1, 1, 1, 1) * mom_q).sum(0)  # (L_i, c, c)
    m_k = (gs[2].view(-1, 1, 1, 1) * mom_k).sum(0)  # (L_j, c, c)
    drq = torch.matmul(m_q, rqd.permute(1, 0, 2)).permute(1, 0, 2)  # (c, L_i, L_j)
    drq = drq + (gm[1].view(-1, 1, 1) * q_pos).sum(0).t()[:, :, None]
    dwk = torch.matmul(m_k, wkd.permute(2, 0, 1)).permute(1, 2, 0)  # (c, L_i, L_j)
    dwk = dwk + (gm[2].view(-1, 1, 1) * k_pos).sum(0).t()[:, None, :]
    return q_args, k_args, drq, dwk


class LogitMomentsFunction(torch.autograd.Function):
    """Autograd function of :func:`logit_moments` with the closed-form backward (float64 throughout)."""

    @staticmethod
    def forward(ctx, q, k, rq, wk):  # type: ignore[override]
        means, squares, saved, ctx.count = _moments(q, k, rq, wk)
        ctx.save_for_backward(q, k, *saved)
        ctx.dtypes = (rq.dtype, wk.dtype) if rq is not None else (None, None)
        return means, squares

    @staticmethod
    def backward(ctx, grad_means, grad_squares):  # type: ignore[override]
        q, k, *saved = ctx.saved_tensors
        q_args, k_args, drq, dwk = _coefficients(saved, grad_means, grad_squares, ctx.count)
        dq, dk = _gradient(q, *q_args), _gradient(k, *k_args)
        if drq is None:
            return dq, dk, None, None
        return dq, dk, drq.to(ctx.dtypes[0]), dwk.to(ctx.dtypes[1])


def _map_views(qkv: torch.Tensor, num_heads: int, qk_dim: int, height: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The query and key channels of a projected map (B, G * (2 c + e), H, W; per head c query, c key, e value channels)
    as views (B, O, G, L, c) of its sequences along the attended axis (L = H where ``height``, else W; O the other).
    """
    b, _, h, w = qkv.shape
    heads = qkv.view(b, num_heads, -1, h, w)
    order = (0, 4, 1, 3, 2) if height else (0, 3, 1, 4, 2)
    return heads[:, :, :qk_dim].permute(order), heads[:, :, qk_dim : 2 * qk_dim].permute(order)


class MapLogitMomentsFunction(torch.autograd.Function):
    """
    :class:`LogitMomentsFunction` reading q and k from the projected map (CPU kernel): its backward returns the map's
    gradient in one tensor (zero in the value channels), so that autograd adds it to the attention's d(map) instead
    of scattering two slice gradients into zero-filled maps.
    """

    @staticmethod
    def forward(ctx, qkv, rq, wk, num_heads: int, qk_dim: int, height: bool):  # type: ignore[override]
        q, k = _map_views(qkv, num_heads, qk_dim, height)
        means, squares, saved, ctx.count = _moments(q, k, rq, wk)
        ctx.save_for_backward(qkv, *saved)
        ctx.layout = (num_heads, qk_dim, height)
        ctx.dtypes = (rq.dtype, wk.dtype) if rq is not None else (None, None)
        return means, squares

    @staticmethod
    def backward(ctx, grad_means, grad_squares):  # type: ignore[override]
        qkv, *saved = ctx.saved_tensors
        num_heads, qk_dim, height = ctx.layout
        q_args, k_args, drq, dwk = _coefficients(saved, grad_means, grad_squares, ctx.count)
        dqkv = torch.empty_like(qkv)
        b, _, h, w = qkv.shape
        dqkv.view(b, num_heads, -1, h, w)[:, :, 2 * qk_dim :].zero_()
        for x, dx, args in zip(
            _map_views(qkv, num_heads, qk_dim, height), _map_views(dqkv, num_heads, qk_dim, height), (q_args, k_args)
        ):
            _gradient(x, *args, out=dx)
        if drq is None:
            return dqkv, None, None, None, None, None
        return dqkv, drq.to(ctx.dtypes[0]), dwk.to(ctx.dtypes[1]), None, None, None


def logit_moments(
    q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor | None = None, wk: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Means and mean squares per head of the content logits ``q_i . k_j`` and, where ``rq`` and ``wk`` are given, of
    the query-position and key-position logits, over all sequences and position pairs.

    Args:
        q, k: (R, G, L, c) query and key channels (R sequences per head, G heads, L positions, c channels).
        rq, wk: (c, L, L) query / key position embeddings indexed [c, i, j], or both None for the content term only.

    Returns:
        means and mean squares, each (terms, G) float64, terms being 3 (content, query-, key-position) or 1.
    """
    if (rq is None) != (wk is None):
        raise ValueError("rq and wk must be given together (position terms) or both be None (content only).")
    return LogitMomentsFunction.apply(q, k, rq, wk)


def map_logit_moments(
    qkv: torch.Tensor,
    num_heads: int,
    qk_dim: int,
    height: bool,
    rq: torch.Tensor | None = None,
    wk: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`logit_moments` of the queries and keys of a projected map, read in place by the fused CPU kernel (call
    :func:`~monai_medt.networks.blocks.cpu_kernel.cpu_kernel` first: this function assumes it returned a module).

    Args:
        qkv: (B, G * (2 c + e), H, W) projected map of a CPU float32 or float64 layer, any strides; per head ``c``
            query, ``c`` key and ``e`` value channels.
        num_heads: G.
        qk_dim: c.
        height: attention along the height (sequences are columns), else along the width.
        rq, wk: (c, L, L) position embeddings, or both None for the content term only.
    """
    if (rq is None) != (wk is None):
        raise ValueError("rq and wk must be given together (position terms) or both be None (content only).")
    return MapLogitMomentsFunction.apply(qkv, rq, wk, num_heads, qk_dim, height)


def logit_norm_scale_reference(
    means: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The training-mode scale ``weight / sqrt(var + eps)`` of the logit batch norm, from the batch means and mean squares
    of the logit terms (each (terms, G), float64), with ordinary differentiable ops (TorchScript, tracing and
    compilation use it).

    Returns:
        the scale (terms * G,) in ``dtype`` and the batch variance (terms * G,) float64 (for the running statistics).
    """
    _, _, var, _, scale = _norm_scale_terms(means, squares, weight, eps)
    return scale.to(dtype), var.detach()


def _norm_scale_terms(means: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, eps: float):
    """(mean, squares - mean^2, var, sqrt(var + eps), scale), flat float64: the scale's formula and its intermediates."""
    mean = means.reshape(-1)
    raw = squares.reshape(-1) - mean * mean
    var = raw.clamp_min(0.0)
    std = torch.sqrt(var + eps)
    return mean, raw, var, std, weight.double() / std


class LogitNormScaleFunction(torch.autograd.Function):
    """
    :func:`logit_norm_scale_reference` with its backward written out: autograd's graph of the same few float64 ops
    is about two dozen small backward ops per attention layer, each a kernel launch on accelerators.
    """

    @staticmethod
    def forward(ctx, means, squares, weight, eps: float, dtype: torch.dtype):  # type: ignore[override]
        mean, raw, var, std, scale = _norm_scale_terms(means, squares, weight, eps)
        ctx.save_for_backward(mean, raw, std, scale)
        ctx.types = (means.shape, weight.dtype)
        ctx.mark_non_differentiable(var)
        ctx.set_materialize_grads(False)  # the variance's gradient stays None instead of a zero-filled tensor
        return scale.to(dtype), var

    @staticmethod
    def backward(ctx, grad_scale, grad_var):  # type: ignore[override]
        if grad_scale is None:
            return None, None, None, None, None
        mean, raw, std, scale = ctx.saved_tensors
        shape, weight_dtype = ctx.types
        grad = grad_scale.double()
        grad_weight = (grad / std).to(weight_dtype) if ctx.needs_input_grad[2] else None
        # d scale / d var = -scale / (2 (var + eps)), where the clamp lets the variance through (raw >= 0); the
        # variance is squares - mean^2
        grad_squares = (grad * scale / (std * std)).mul_(-0.5).masked_fill_(raw < 0, 0.0)
        grad_means = (mean * grad_squares).mul_(-2.0)
        return grad_means.view(shape), grad_squares.view(shape), grad_weight, None, None


def logit_norm_scale(
    means: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`logit_norm_scale_reference` through :class:`LogitNormScaleFunction` in eager mode (the same values and
    gradients in fewer ops), through the plain formula under tracing or compilation.

    Args:
        means, squares: (terms, G) float64 batch means and mean squares of the logit terms (:func:`logit_moments`).
        weight: (terms * G,) the logit batch norm's weight.
        eps: the batch norm's eps.
        dtype: the scale's dtype.

    Returns:
        the scale (terms * G,) in ``dtype`` and the batch variance (terms * G,) float64, not differentiable.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return logit_norm_scale_reference(means, squares, weight, eps, dtype)
    return LogitNormScaleFunction.apply(means, squares, weight, eps, dtype)
