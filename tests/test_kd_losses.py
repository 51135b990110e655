"""Every KD loss: minimal when the student equals the teacher, right gradient sign; the gate."""
import pytest
import torch
from torch import nn

from recbole_kd.kd.base import KD_LOSSES, KDInputs
from recbole_kd.kd.losses import get_kd_loss
from recbole_kd.kd.gate import gate_weights, weighted_mean
from recbole_kd.kd.losses import hard, hint, rd, rrd, soft, soft_full  # noqa: F401

torch.manual_seed(0)
M, N, K, D = 6, 40, 8, 5


def inputs(student_logits, teacher_logits, hidden_s=None, hidden_t=None, modules=None, k=K):
    scores, ids = teacher_logits.topk(k, dim=1)
    return KDInputs(
        student_logits=student_logits,
        student_hidden=hidden_s if hidden_s is not None else torch.randn(M, D),
        teacher_ids=ids,
        teacher_scores=scores,
        targets=ids[:, 0],
        teacher_log_norm=teacher_logits.logsumexp(1),
        teacher_hidden=hidden_t if hidden_t is not None else torch.randn(M, D),
        modules=modules or nn.ModuleDict(),
    )


def call(name, x):
    loss = get_kd_loss(name)
    return loss.fn(x, **loss.defaults)


@pytest.mark.parametrize("name", ["hard", "soft", "soft_full", "rd", "rrd"])
def test_minimal_when_student_equals_teacher(name):
    """Among all permutations of the teacher's own scores, the teacher's ordering scores best."""
    teacher = torch.randn(M, N) * 3
    torch.manual_seed(1)
    same = call(name, inputs(teacher.clone(), teacher)).mean()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        perm = torch.stack([torch.randperm(N, generator=g) for _ in range(M)])
        shuffled = teacher.gather(1, perm)
        torch.manual_seed(1)
        other = call(name, inputs(shuffled, teacher)).mean()
        assert same <= other + 1e-6, (name, float(same), float(other))


def test_soft_is_zero_when_equal():
    teacher = torch.randn(M, N)
    assert call("soft", inputs(teacher.clone(), teacher)).abs().max() < 1e-5


def test_soft_full_is_zero_when_equal_and_the_exact_kl_over_all_items():
    teacher, student = torch.randn(M, N) * 2, torch.randn(M, N) * 2
    assert call("soft_full", inputs(teacher.clone(), teacher)).abs().max() < 1e-5
    full_kl = (teacher.softmax(1) * (teacher.log_softmax(1) - student.log_softmax(1))).sum(1)
    # with the top-K covering the catalogue it is the full KL; with K < N it pools the rest into one
    # class, a coarser partition: never more than the full KL (log-sum inequality), and more than 0
    assert torch.allclose(call("soft_full", inputs(student, teacher, k=N)), full_kl, atol=1e-5)
    pooled = call("soft_full", inputs(student, teacher))
    assert (pooled <= full_kl + 1e-6).all() and (pooled > 0).all()


def test_soft_full_moves_mass_into_the_top_k_where_soft_cannot():
    """A student with the teacher's scores but every top-K item lowered by the same amount has the
    teacher's distribution within the top-K and too little mass on it: ``soft`` (renormalised over
    the top-K) sees nothing, ``soft_full`` sees the gap, and its gradient raises every top-K item."""
    teacher = torch.randn(M, N) * 3
    x = inputs(teacher.clone(), teacher)
    lowered = teacher.clone().scatter_add_(1, x.teacher_ids, torch.full((M, K), -2.0)).requires_grad_(True)
    x = inputs(lowered, teacher)
    assert call("soft", x).abs().max() < 1e-5
    gap = call("soft_full", x)
    assert (gap > 1e-3).all()
    gap.sum().backward()
    assert (lowered.grad.gather(1, x.teacher_ids) < 0).all()  # descending raises each top-K item


def test_hint_is_zero_when_equal_and_projection_identity():
    h = torch.randn(M, D)
    proj = nn.Linear(D, D, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(D))
    x = inputs(torch.randn(M, N), torch.randn(M, N), hidden_s=h, hidden_t=h.clone(), modules=nn.ModuleDict({"hint": proj}))
    assert call("hint", x).abs().max() < 1e-7


@pytest.mark.parametrize("name", ["hard", "soft", "soft_full", "rd", "rrd"])
def test_gradient_raises_teacher_top_item(name):
    """Descending the loss raises the student's score of the teacher's top-1 item relative to the rest."""
    teacher = torch.randn(M, N) * 3
    student = torch.randn(M, N).requires_grad_(True)
    x = inputs(student, teacher)
    torch.manual_seed(2)
    call(name, x).sum().backward()
    top1 = x.teacher_ids[:, 0]
    g_top = student.grad.gather(1, top1.unsqueeze(1)).squeeze(1)
    outside = torch.ones(M, N, dtype=torch.bool)
    outside.scatter_(1, x.teacher_ids, False)
    g_out = (student.grad * outside).sum(1) / outside.sum(1)
    assert (g_top < g_out).all(), name  # gradient descent raises top-1 more than non-top-K items


def test_hint_gradient_moves_towards_teacher():
    proj = nn.Linear(D, D, bias=False)
    hs = torch.randn(M, D, requires_grad=True)
    ht = torch.randn(M, D)
    x = inputs(torch.randn(M, N), torch.randn(M, N), hidden_s=hs, hidden_t=ht, modules=nn.ModuleDict({"hint": proj}))
    before = call("hint", x).sum()
    before.backward()
    with torch.no_grad():
        hs2 = hs - 0.1 * hs.grad
    x.student_hidden = hs2
    assert call("hint", x).sum() < before


def test_gate_excludes_rows_where_teacher_misses():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4], [9, 10, 11, 12]])
    targets = torch.tensor([6, 30, 12])
    assert gate_weights("topk", ids, targets, k=2).tolist() == [1.0, 0.0, 0.0]
    assert gate_weights("topk", ids, targets, k=4).tolist() == [1.0, 0.0, 1.0]
    w = gate_weights("rank", ids, targets, k=2)
    assert w[0] == 2 / 3 and w[1] == 2 / 6 and w[2] == 2 / 5
    assert gate_weights("none", ids, targets, k=2).tolist() == [1.0, 1.0, 1.0]
    per_row = torch.tensor([1.0, 100.0, 100.0])
    assert weighted_mean(per_row, gate_weights("topk", ids, targets, k=2)) == 1.0
    assert weighted_mean(per_row, torch.zeros(3)) == 0.0


def test_unknown_loss_name():
    with pytest.raises(KeyError, match="unknown KD loss 'nope'"):
        get_kd_loss("nope")


@pytest.mark.parametrize("mode", ["prefetched", "products", "rows", "one-row-chunks"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("name", sorted(KD_LOSSES))  # every registered loss
def test_lazy_item_scores_give_the_same_loss_and_gradients_as_full_logits(name, with_bias, mode, monkeypatch):
    """The distillation trainer hands losses an ItemScores (never the [M, N] logits: the teacher's
    top-K prefetched with the normaliser in one chunked pass; other ids by chunked products or
    per-row dot products): same value and same gradients as the full logits for every loss in every
    mode, and the student's own cross-entropy through log_prob_of is unchanged too."""
    import recbole_kd.fused as fused
    from recbole_kd.fused import ItemScores

    monkeypatch.setattr(ItemScores, "gather_products_per_id", 0 if mode == "rows" else 10**6)
    if mode == "one-row-chunks":
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(fused, "MIN_CHUNK_ROWS", 1)
    else:
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 4 * N)  # 4 rows per chunk: M=6 gives an uneven last one

    torch.manual_seed(3)
    hidden = torch.randn(M, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(N, dtype=torch.float64, requires_grad=True) if with_bias else None
    teacher = torch.randn(M, N, dtype=torch.float64) * 3
    params = [t for t in (hidden, weight, bias) if t is not None]
    proj = nn.Linear(D, D, bias=False).double()
    t_hidden = torch.randn(M, D, dtype=torch.float64)

    def loss_and_grads(lazy):
        full = hidden @ weight.t() + (bias if with_bias else 0)
        x = inputs(full, teacher, hidden_s=hidden, hidden_t=t_hidden, modules=nn.ModuleDict({"hint": proj}))
        torch.manual_seed(4)  # rrd samples its uninteresting items (before scoring, as the trainer does)
        if lazy:
            prefetch = ()
            if mode == "prefetched":
                loss = get_kd_loss(name)
                if loss.extra_ids is not None:
                    x.extra_ids[name] = loss.extra_ids(x.teacher_ids, N, **loss.defaults)
                prefetch = (x.teacher_ids, *x.extra_ids.values())
            x.student_logits = ItemScores(hidden, weight, bias, prefetch=prefetch)
        value = call(name, x).sum() - x.log_prob_of(x.targets).mean()
        return value, torch.autograd.grad(value, params)

    lazy_value, lazy_grads = loss_and_grads(True)
    full_value, full_grads = loss_and_grads(False)
    assert torch.allclose(lazy_value, full_value, atol=1e-10)
    for a, b in zip(lazy_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_lazy_item_scores_full_matches_and_reads_only_what_is_asked():
    from recbole_kd.fused import ItemScores

    torch.manual_seed(5)
    h, w, b = torch.randn(9, 4, dtype=torch.float64), torch.randn(23, 4, dtype=torch.float64), torch.randn(23, dtype=torch.float64)
    ids = torch.randint(0, 23, (9, 3))
    s = ItemScores(h, w, b, prefetch=(ids,))
    assert s.shape == (9, 23) and s.size(1) == 23 and torch.allclose(s.full(), h @ w.t() + b)
    assert torch.allclose(s.log_softmax().full(), torch.log_softmax(h @ w.t() + b, 1))
    assert torch.allclose(s.logsumexp(), torch.logsumexp(h @ w.t() + b, 1))
    assert s.gather(1, ids) is s.gather(1, ids)  # prefetched: scored once
    assert torch.allclose(s.log_softmax().gather(1, ids), torch.log_softmax(h @ w.t() + b, 1).gather(1, ids))


@pytest.mark.parametrize("bitmap", [True, False])
def test_rrd_row_membership_equals_pairwise_comparison(bitmap, monkeypatch):
    from recbole_kd.kd.losses import rrd as rrd_module

    monkeypatch.setattr(rrd_module, "DENSE_MEMBERSHIP_CELLS", 10**9 if bitmap else 0)
    g = torch.Generator().manual_seed(7)
    members = torch.randint(1, 30, (20, 6), generator=g)
    query = torch.randint(1, 30, (20, 40), generator=g)
    expected = (query.unsqueeze(2) == members.unsqueeze(1)).any(2)
    assert expected.any() and not expected.all()
    assert torch.equal(rrd_module.row_membership(query, members, 30), expected)


def test_rrd_suffix_logsumexp_equals_logcumsumexp_with_its_gradient():
    from recbole_kd.kd.losses.rrd import suffix_logsumexp

    torch.manual_seed(8)
    top = (torch.randn(7, 12, dtype=torch.float64) * 20).requires_grad_(True)  # wide spread of scores
    ours = suffix_logsumexp(top)
    ref = torch.logcumsumexp(top.flip(1), dim=1).flip(1)
    assert torch.allclose(ours, ref, atol=1e-9)
    w = torch.randn(7, 12, dtype=torch.float64)
    g_ours, = torch.autograd.grad((ours * w).sum(), top)
    g_ref, = torch.autograd.grad((ref * w).sum(), top)
    assert torch.allclose(g_ours, g_ref, atol=1e-9)
    far = torch.tensor([[0.0, -200.0]], requires_grad=True)  # float32: the tail underflows
    out = suffix_logsumexp(far)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(far.grad).all()


def test_item_scores_compute_the_normaliser_only_when_asked(monkeypatch):
    """Reading the top-K alone (a BPR student with soft/rd/rrd) scores just those ids: no pass over
    all items; once the normaliser is asked for, the prefetched ids not read yet come from that pass."""
    import recbole_kd.fused as fused
    from recbole_kd.fused import ItemScores

    calls = []
    real = fused._LinearScores.apply
    monkeypatch.setattr(fused._LinearScores, "apply", lambda *a: calls.append(len(a) - 4) or real(*a))
    monkeypatch.setattr(ItemScores, "gather_products_per_id", 0)  # large catalogue: per-row products
    torch.manual_seed(6)
    h, w = torch.randn(9, 4, dtype=torch.float64), torch.randn(40, 4, dtype=torch.float64)
    top, extra = torch.randint(0, 40, (9, 3)), torch.randint(0, 40, (9, 5))
    full = h @ w.t()
    s = ItemScores(h, w, prefetch=(top, extra))
    assert torch.allclose(s.gather(1, top), full.gather(1, top)) and calls == []
    assert torch.allclose(s.logsumexp(), torch.logsumexp(full, 1)) and calls == [1]  # only `extra` left
    assert torch.allclose(s.gather(1, extra), full.gather(1, extra)) and calls == [1]
    s = ItemScores(h, w, prefetch=(top, extra))  # the student's cross-entropy first: one pass for all
    s.logsumexp()
    assert calls == [1, 2] and s.gather(1, top) is s.gather(1, top)


def _short_rows(pad_ids):
    """Inputs where row 0 has 3 ranked items and row 1 none (the teacher's top-K padded with score -inf,
    as TeacherOutputs pads a row with fewer than K items it may rank); ``pad_ids`` fill the padding."""
    g = torch.Generator().manual_seed(3)
    student = torch.randn(M, N, generator=g)
    teacher = torch.randn(M, N, generator=g) * 2
    scores, ids = teacher[:, 20:].topk(K, dim=1)
    ids = ids + 20  # ranked items among 20..39
    scores, ids = scores.clone(), ids.clone()
    scores[0, 3:] = float("-inf")
    scores[1, :] = float("-inf")
    ids[0, 3:] = pad_ids[: K - 3]
    ids[1, :] = pad_ids[:K]
    x = KDInputs(student_logits=student, student_hidden=torch.randn(M, D), teacher_ids=ids, teacher_scores=scores,
                 targets=ids[:, 0], teacher_log_norm=teacher.logsumexp(1), teacher_hidden=torch.randn(M, D))
    # rrd's uninteresting items, fixed and apart from every id above
    x.extra_ids = {"rrd": torch.randint(10, 20, (M, 30), generator=g)}
    return x


@pytest.mark.parametrize("name", ["hard", "soft", "soft_full", "rd", "rrd"])
def test_padded_entries_of_short_rows_are_never_read(name):
    """A row with fewer than K items the teacher may rank: its padded ids (arbitrary masked items) must
    not change the loss, and a row with none gives 0, never NaN (hard / rd / rrd read them as labels)."""
    x = _short_rows(torch.arange(1, 9))
    x.student_logits.requires_grad_(True)
    a = call(name, x)
    b = call(name, _short_rows(torch.arange(2, 10).flip(0)))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    a.sum().backward()
    assert torch.isfinite(x.student_logits.grad).all()
    assert torch.allclose(a, b, atol=1e-6), (name, a[:2], b[:2])
    assert float(a[1].detach()) == pytest.approx(0.0, abs=1e-6)
