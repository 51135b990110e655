"""Full-softmax cross-entropy over all items without materialising the [M, n_items] logits.

``F.cross_entropy(hidden @ weight.T + bias, targets)`` writes the logits, reads them back for the
log-softmax, keeps them for backward and reads them twice more there: on CPU that memory traffic
costs more than the matrix products (ml-100k at batch 2048: 97k positions x 1,683 items). Here the rows are processed in cache-sized chunks and each chunk's gradient
(softmax - one-hot) is folded into the gradients of ``hidden``, ``weight`` and ``bias`` at once,
in the forward pass (the loss is a scalar, so backward only scales them): same loss and gradients
to float rounding, much faster on CPU (with the one-kernel GELU, a SASRec-S epoch went from 20.8 s to
8.5 s: benchmarks/results/engine_speed_ml-100k_speed.md and its git history), and the peak memory of the loss no longer grows
with the catalogue (the idea of Liger-Kernel's fused linear cross-entropy).

``ItemScores`` gives the distillation losses the same economy: scores where they are read plus a
chunked normaliser, never the [M, n_items] logits.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 20  # logits per chunk (4 MB in float32: stays in cache)
MIN_CHUNK_ROWS = 64


def chunk_rows(n_items: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(int(n_items), 1))


def _one_precision(step):
    """Run a kernel's forward/backward with autocast off: its products, ``out=`` writes and
    accumulators keep the inputs' dtype (RecBole's ``enable_amp`` would otherwise turn the
    products into bfloat16/float16 next to float32 buffers)."""

    @functools.wraps(step)
    def wrapper(ctx, *args):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return step(ctx, *args)

    return wrapper


def _common_dtype(hidden, weight, bias):
    """``hidden`` and ``bias`` in the item table's dtype (under autocast the hidden states may be
    half precision); a differentiable cast, so their gradients come back in their own dtype."""
    return hidden.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)


def _accumulate(grad_scores, h, weight, rows: slice, grad_h, grad_w, grad_b) -> None:
    """Push one chunk's gradient w.r.t. its scores ``h @ weight.T + bias`` into the gradients of
    ``hidden`` (rows ``rows``), ``weight`` and ``bias`` (each skipped when None)."""
    if grad_h is not None:
        torch.mm(grad_scores, weight, out=grad_h[rows])
    if grad_w is not None:
        grad_w.addmm_(grad_scores.t(), h)
    if grad_b is not None:
        grad_b += grad_scores.sum(0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    @_one_precision
    def forward(ctx, hidden, weight, bias, targets, rows):
        m = hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if bias is not None and need_b else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        weight_t = weight.t().contiguous()  # [d, N] row-major: faster products at small d on CPU
        for start in range(0, m, rows):
            h = hidden[start : start + rows]
            t = targets[start : start + rows].unsqueeze(1)
            logits = h @ weight_t if bias is None else torch.addmm(bias, h, weight_t)
            lse = torch.logsumexp(logits, 1, keepdim=True)
            total += (lse - logits.gather(1, t)).sum(dtype=torch.float64)
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            prob = logits.sub_(lse).exp_()  # softmax, in place of the logits
            prob.scatter_add_(1, t, prob.new_full(t.shape, -1.0))  # d(sum of losses) / d logits
            _accumulate(prob, h, weight, slice(start, start + rows), grad_h, grad_w, grad_b)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.count = max(m, 1)
        return (total / ctx.count).to(hidden.dtype)

    @staticmethod
    @_one_precision
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out / ctx.count
        return (
            None if grad_h is None else grad_h * scale,
            None if grad_w is None else grad_w * scale,
            None if grad_b is None else grad_b * scale,
            None,
            None,
        )


def linear_cross_entropy(hidden, weight, targets, bias=None, rows: int | None = None) -> torch.Tensor:
    """Mean of ``F.cross_entropy(hidden @ weight.T + bias, targets)`` computed chunk by chunk.

    ``hidden`` [M, d], ``weight`` [N, d], ``bias`` [N] or None, ``targets`` [M] class ids in [0, N).
    Gradients flow to ``hidden``, ``weight`` and ``bias`` (not twice differentiable)."""
    hidden, weight, bias = _common_dtype(hidden, weight, bias)
    if hidden.shape[0] == 0:  # nothing to chunk: the plain formula (NaN, as F.cross_entropy gives)
        logits = hidden @ weight.t()
        return F.cross_entropy(logits if bias is None else logits + bias, targets)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, rows or chunk_rows(weight.shape[0]))


class _LinearGather(torch.autograd.Function):
    """``(hidden @ weight.T + bias).gather(1, index)`` chunk by chunk: the gradient of the gathered
    scores is scattered into a dense chunk and pushed through two matrix products (on CPU far
    cheaper than the index-accumulate backward of ``weight[index]`` when the catalogue is small)."""

    @staticmethod
    @_one_precision
    def forward(ctx, hidden, weight, bias, index, rows):
        out = hidden.new_empty(index.shape)
        weight_t = weight.t().contiguous()  # [d, N] row-major: faster products at small d on CPU
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows]
            logits = h @ weight_t if bias is None else torch.addmm(bias, h, weight_t)
            torch.gather(logits, 1, index[start : start + rows], out=out[start : start + rows])
        ctx.save_for_backward(hidden, weight, bias, index)
        ctx.rows = rows
        return out

    @staticmethod
    @_one_precision
    def backward(ctx, grad_out):
        hidden, weight, bias, index = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if bias is not None and need_b else None
        for start in range(0, hidden.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            h = hidden[sl]
            dense = hidden.new_zeros(h.shape[0], weight.shape[0]).scatter_add_(1, index[sl], grad_out[sl])
            _accumulate(dense, h, weight, sl, grad_h, grad_w, grad_b)
        return grad_h, grad_w, grad_b, None, None


class _LinearScores(torch.autograd.Function):
    """One chunked pass over ``hidden @ weight.T + bias`` giving the row-wise logsumexp [M] and the
    scores at each given index [M, K_j]; backward is one pass as well (recomputed softmax times the
    normaliser's gradient plus the gathered scores' gradients, through two matrix products)."""

    @staticmethod
    @_one_precision
    def forward(ctx, hidden, weight, bias, rows, *indices):
        ctx.set_materialize_grads(False)
        lse = hidden.new_empty(hidden.shape[0])
        outs = [hidden.new_empty(index.shape) for index in indices]
        weight_t = weight.t().contiguous()  # [d, N] row-major: faster products at small d on CPU
        for start in range(0, hidden.shape[0], rows):
            sl = slice(start, start + rows)
            logits = hidden[sl] @ weight_t if bias is None else torch.addmm(bias, hidden[sl], weight_t)
            torch.logsumexp(logits, 1, out=lse[sl])
            for index, out in zip(indices, outs):
                torch.gather(logits, 1, index[sl], out=out[sl])
        ctx.save_for_backward(hidden, weight, bias, lse, *indices)
        ctx.rows = rows
        return (lse, *outs)

    @staticmethod
    @_one_precision
    def backward(ctx, grad_lse, *grad_outs):
        hidden, weight, bias, lse, *indices = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if bias is not None and need_b else None
        nothing = (None,) * len(indices)
        if grad_lse is None and all(g is None for g in grad_outs):
            return (grad_h, grad_w, grad_b, None, *nothing)
        weight_t = weight.t().contiguous()  # [d, N] row-major: faster products at small d on CPU
        for start in range(0, hidden.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            h = hidden[sl]
            if grad_lse is not None:  # d lse / d logits = softmax
                dense = h @ weight_t if bias is None else torch.addmm(bias, h, weight_t)
                dense.sub_(lse[sl].unsqueeze(1)).exp_().mul_(grad_lse[sl].unsqueeze(1))
            else:
                dense = h.new_zeros(h.shape[0], weight.shape[0])
            for index, grad in zip(indices, grad_outs):
                if grad is not None:
                    dense.scatter_add_(1, index[sl], grad[sl])
            _accumulate(dense, h, weight, sl, grad_h, grad_w, grad_b)
        return (grad_h, grad_w, grad_b, None, *nothing)


class ItemScores:
    """Scores of every item for M rows (``hidden @ weight.T + bias``, [M, N]) for the KD losses,
    computed only where they are read, never as the [M, N] tensor.

    Stands in for the score tensor in what the losses do with it: ``gather(1, ids)``, ``size()``,
    ``shape``, ``device``, ``log_softmax()`` (read with ``gather`` too); ``full()`` gives all of it.
    The normaliser (logsumexp) and the scores at the ``prefetch`` ids (the teacher's top-K, ids a
    loss draws up front such as RRD's samples) come from one chunked pass forward and one backward
    once the normaliser is asked for (the student's own cross-entropy asks first) -- one matrix
    product more than the student's fused cross-entropy. Other ids, and prefetched ids read while
    nothing needs the normaliser (a BPR student), cost a pass of their own: chunked products for
    small catalogues, per-row dot products for large ones (the targets, one id per row, take the
    latter)."""

    gather_products_per_id = 64  # lazy gather: chunked products while N <= this x K ids per row

    def __init__(self, hidden, weight, bias=None, prefetch: tuple[torch.Tensor, ...] = ()):
        self.hidden, self.weight, self.bias = _common_dtype(hidden, weight, bias)
        self._gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prefetch = tuple(prefetch)
        self._lse: torch.Tensor | None = None

    def _first_pass(self) -> None:
        """The normaliser, with the scores of the prefetched ids not read yet in the same pass."""
        todo = [i for i in self._prefetch if self._gathered.get(id(i), (None,))[0] is not i]
        lse, *outs = _LinearScores.apply(self.hidden, self.weight, self.bias, chunk_rows(self.weight.shape[0]), *todo)
        self._lse = lse
        for index, out in zip(todo, outs):
            self._gathered[id(index)] = (index, out)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.hidden.shape[0], self.weight.shape[0]))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def gather(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """``scores.gather(1, index)`` for index [M, K]; the same index object is scored once."""
        if dim not in (1, -1):
            raise ValueError("ItemScores.gather: only dim=1 (items) is supported")
        # a pass over all items only when the normaliser is (or was) asked for: a student whose own
        # loss needs no softmax (BPR) and losses that read only the top-K (soft, rd, rrd) score just those
        hit = self._gathered.get(id(index))
        if hit is not None and hit[0] is index:
            return hit[1]
        if self.weight.shape[0] <= self.gather_products_per_id * max(index.shape[1], 1):
            out = _LinearGather.apply(self.hidden, self.weight, self.bias, index, chunk_rows(self.weight.shape[0]))
        else:
            with torch.autocast(self.hidden.device.type, enabled=False):  # the table's precision, as above
                out = torch.bmm(self.weight[index], self.hidden.unsqueeze(2)).squeeze(2)
                if self.bias is not None:
                    out = out + self.bias[index]
        self._gathered[id(index)] = (index, out)
        return out

    def logsumexp(self) -> torch.Tensor:
        if self._lse is None:
            self._first_pass()
        return self._lse

    def log_softmax(self) -> "ItemLogProbs":
        return ItemLogProbs(self)

    def full(self) -> torch.Tensor:
        with torch.autocast(self.hidden.device.type, enabled=False):
            logits = self.hidden @ self.weight.t()
            return logits if self.bias is None else logits + self.bias


class ItemLogProbs:
    """log_softmax over all items of an ``ItemScores``, read with ``gather(1, ids)`` (or ``full()``)."""

    def __init__(self, scores: ItemScores):
        self.scores = scores

    @property
    def shape(self) -> torch.Size:
        return self.scores.shape

    def size(self, dim: int | None = None):
        return self.scores.size(dim)

    def gather(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        lse = self.scores.logsumexp()  # first: prefetched ids come with the normaliser's pass
        return self.scores.gather(dim, index) - lse.unsqueeze(1)

    def full(self) -> torch.Tensor:
        return F.log_softmax(self.scores.full(), dim=1)
