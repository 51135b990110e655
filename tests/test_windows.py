"""Window construction for the fast sequential engine, and equality with RecBole's split."""
import collections
import os

import numpy as np
import pytest
import torch

from recbole_kd.models.windows import (
    OWN_FROM_FIELD,
    WINDOW_FIELD,
    build_windows,
    owned_target_mask,
    user_train_sequences,
    window_starts,
)


@pytest.mark.parametrize("n,span,stride", [(5, 11, 5), (11, 11, 5), (12, 11, 5), (40, 11, 11), (40, 11, 3), (100, 51, 25)])
def test_every_position_owned_exactly_once(n, span, stride):
    seq = np.arange(1, n + 1)
    table = build_windows([7], [seq], span=span, stride=stride, causal=True)
    w, own = table[WINDOW_FIELD], table[OWN_FROM_FIELD]
    starts = window_starts(n, span, min(stride, span - 1))
    counts = collections.Counter()
    for row, a in zip(range(w.shape[0]), starts):
        for p in range(span):
            if w[row, p] > 0 and p >= own[row]:
                counts[a + p] += 1
                assert w[row, p] == seq[a + p]
    # every item but the first is a target exactly once; the first never is
    assert counts == {i: 1 for i in range(1, n)}


def test_targets_never_in_their_own_input(tiny_data, workdir):
    """Causality: the hidden state at position p does not change when later items change."""
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_model

    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": tiny_data, "state": "WARNING"})
    _, train, _, _ = prepare(cfg)
    model = get_model("SASRec-S")(cfg, train.dataset).eval()
    batch = next(iter(train))
    inputs = batch[WINDOW_FIELD][:, :-1].clone()
    p = 3
    h1 = model.encode(inputs)[:, : p + 1]
    altered = inputs.clone()
    altered[:, p + 1 :] = torch.where(altered[:, p + 1 :] > 0, (altered[:, p + 1 :] % 50) + 1, altered[:, p + 1 :])
    h2 = model.encode(altered)[:, : p + 1]
    assert torch.allclose(h1, h2, atol=1e-5)
    # and the target of position p is window[p + 1], never inside inputs[:p + 1] by construction
    mask = owned_target_mask(batch[WINDOW_FIELD][:, 1:], batch[OWN_FROM_FIELD] - 1)
    assert mask.any()


def _raw_sequences(data_root):
    rows = collections.defaultdict(list)
    with open(os.path.join(data_root, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            u, i, t = line.split()
            rows[u].append((float(t), i))
    return {u: [i for _, i in sorted(v)] for u, v in rows.items()}


def test_rebuilt_sequences_equal_raw_training_part(tiny_data, workdir):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": tiny_data, "state": "WARNING"})
    dataset, train, _, _ = prepare(cfg)
    users, seqs = user_train_sequences(train.dataset)
    raw = _raw_sequences(tiny_data)
    id2tok_u = dataset.field2id_token["user_id"]
    id2tok_i = dataset.field2id_token["item_id"]
    assert len(users) == len(raw)
    for u, s in zip(users, seqs):
        expected = raw[id2tok_u[u]][:-2]  # leave-one-out: last -> test, second last -> valid
        assert [id2tok_i[i] for i in s] == expected
    # every training interaction except each user's first is a target exactly once per epoch
    assert train.num_targets() == sum(len(s) - 1 for s in seqs)
    seen = collections.Counter()
    for batch in train:
        w, own = batch[WINDOW_FIELD], batch[OWN_FROM_FIELD]
        m = owned_target_mask(w, own)
        seen.update(m.sum(1).tolist() and [int(m.sum())])
    assert sum(seen.elements()) == train.num_targets()


def test_eval_split_identical_to_recbole_stock(tiny_data, workdir):
    """Our models keep RecBole's valid/test data: same users, histories and targets as stock SASRec."""
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    def eval_sets(model):
        cfg = build_config(model, "tiny", overrides={"data_path": tiny_data, "state": "WARNING",
                                                     "MAX_ITEM_LIST_LENGTH": 50})
        _, _, valid, test = prepare(cfg)
        out = []
        for loader in (valid, test):
            d = loader.dataset.inter_feat
            out.append(sorted(zip(d["user_id"].tolist(), d["item_id"].tolist(),
                                  map(tuple, d["item_id_list"].tolist()), d["item_length"].tolist())))
        return out

    assert eval_sets("SASRec-S") == eval_sets("SASRec")


def test_group_by_length_visits_every_window_once_and_cuts_padding():
    import torch

    from recbole_kd.models.windows import WindowDataLoader, build_windows

    torch.manual_seed(0)
    users = list(range(1, 201))
    seqs = [list(range(1, 2 + (u * 7) % 40)) for u in users]  # lengths 1..40
    table = build_windows(users, seqs, span=41, stride=40, causal=True)

    class _DS:
        uid_field = "user_id"

    plain = WindowDataLoader(None, _DS(), table, batch_size=16, shuffle=True)
    grouped = WindowDataLoader(None, _DS(), table, batch_size=16, shuffle=True, group_by_length=4)
    for loader in (plain, grouped):
        seen = torch.cat(loader.batch_order())
        assert sorted(seen.tolist()) == list(range(loader.num_windows))

    def padding(loader):
        cells = 0
        for b in loader:
            cells += b["window_seq"].numel()
        return cells

    assert padding(grouped) < 0.8 * padding(plain)


def test_prefixes_zero_the_columns_after_each_position():
    from recbole_kd.models.windows import prefixes

    inputs = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    got = prefixes(inputs, torch.tensor([0, 1, 1]), torch.tensor([1, 0, 3]))
    assert got.tolist() == [[5, 6, 0, 0], [8, 0, 0, 0], [8, 9, 10, 11]]
