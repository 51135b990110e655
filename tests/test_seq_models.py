"""Sequential engine details: sampled softmax, BERT4Rec's [MASK] at evaluation."""
import pytest
import torch

from recbole_kd.models.sasrec import sampled_softmax_loss


def test_sampled_softmax_masks_accidental_positives_and_learns():
    torch.manual_seed(0)
    items = torch.nn.Parameter(torch.randn(30, 8))
    hidden = torch.randn(16, 8, requires_grad=True)
    targets = torch.randint(1, 30, (16,))
    torch.manual_seed(1)
    loss = sampled_softmax_loss(hidden, targets, items, num_negatives=100)  # positives surely sampled too
    torch.manual_seed(1)
    neg = torch.randint(1, 30, (100,))
    expected = []
    for h, t in zip(hidden, targets):
        negs = neg[neg != t]  # a sampled copy of the positive is not a negative
        logits = torch.cat([(h * items[t]).sum().view(1), items[negs] @ h])
        expected.append(-torch.log_softmax(logits, 0)[0])
    assert (neg.unsqueeze(0) == targets.unsqueeze(1)).any()
    assert torch.isfinite(loss) and abs(float(loss) - float(torch.stack(expected).mean())) < 1e-4
    loss.backward()
    assert hidden.grad is not None


def test_sampled_loss_type_trains(tiny_data, workdir):
    from recbole_kd.quick_start import run

    res = run("SASRec-S", "tiny", overrides={"data_path": tiny_data, "epochs": 1, "show_progress": False,
                                             "state": "WARNING", "loss_type": "sampled", "num_negatives": 20})
    assert res["config"]["loss_type"] == "sampled" and 0 <= res["test_result"]["ndcg@10"] <= 1


def test_bert4rec_appends_mask_after_history(tiny_data, workdir):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_model

    cfg = build_config("BERT4Rec-L", "tiny", overrides={"data_path": tiny_data, "state": "WARNING",
                                                        "MAX_ITEM_LIST_LENGTH": 5, "hidden_size": 16, "inner_size": 32})
    _, train, _, _ = prepare(cfg)
    model = get_model("BERT4Rec-L")(cfg, train.dataset)
    seq = torch.tensor([[3, 4, 0, 0, 0], [1, 2, 3, 4, 5]])
    out, pos = model._append_mask(seq, torch.tensor([2, 5]))
    m = model.mask_token
    assert out.tolist() == [[3, 4, m, 0, 0], [2, 3, 4, 5, m]]
    assert pos.tolist() == [2, 4]


@pytest.mark.parametrize("name", ["SASRec-S", "BERT4Rec-L"])
def test_length_sorted_inference_equals_one_padded_pass(name, tmp_path):
    """forward() encodes length-sorted chunks with trailing padding cut; same numbers as one pass."""
    import torch

    from conftest import write_tiny_dataset
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry

    data = write_tiny_dataset(tmp_path, n_users=300, min_len=3, max_len=60)
    cfg = build_config(name, "tiny", overrides={"data_path": data, "state": "WARNING", "MAX_ITEM_LIST_LENGTH": 50})
    _, train, _, test = prepare(cfg)
    model = get_entry(name).cls(cfg, train.dataset).eval()
    model.inference_chunk = 64
    inter = test.dataset.inter_feat
    seq, lens = inter[model.ITEM_SEQ], inter[model.ITEM_SEQ_LEN]
    assert int(lens.max()) == seq.size(1) and int(lens.min()) < 10  # full and short histories
    with torch.no_grad():
        torch.testing.assert_close(model.forward(seq, lens), model.last_hidden(seq, lens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunked_linear_cross_entropy_equals_plain_cross_entropy(with_bias, rows):
    """Same loss and same gradients (hidden, weight, bias) as F.cross_entropy on the full logits,
    whatever the chunk size (1 row, uneven last chunk, one chunk)."""
    import torch.nn.functional as F

    from recbole_kd.fused import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 13, (50,))
    ref = F.cross_entropy(hidden @ weight.t() + (bias if with_bias else 0), targets)
    ref_grads = torch.autograd.grad(3 * ref, [t for t in (hidden, weight, bias) if t is not None])
    ours = linear_cross_entropy(hidden, weight, targets, bias, rows=rows)
    grads = torch.autograd.grad(3 * ours, [t for t in (hidden, weight, bias) if t is not None])
    assert torch.allclose(ours, ref, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-12)
    with torch.no_grad():  # evaluation: the loss only, no gradient buffers
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, bias, rows=rows), ref, atol=1e-12)


def test_windowed_ce_loss_uses_the_chunked_path_with_the_same_value(tiny_data, workdir):
    """SASRec-S's training loss equals the plain full-softmax cross-entropy over its own logits,
    and its FeedForward GELU equals RecBole's erf formula."""
    import torch.nn.functional as F
    from recbole.model.layers import FeedForward

    from recbole_kd.config import build_config
    from recbole_kd.models.windows import WINDOW_FIELD
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_model

    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": tiny_data, "state": "WARNING"})
    _, train, _, _ = prepare(cfg)
    model = get_model("SASRec-S")(cfg, train.dataset).eval()
    loader = model.build_train_dataloader(cfg, train)
    batch = next(iter(loader))
    assert batch[WINDOW_FIELD].numel() > 0
    hidden, targets, _ = model.window_outputs(batch)
    assert torch.allclose(model.calculate_loss(batch), F.cross_entropy(model.item_logits(hidden), targets), atol=1e-5)
    x = torch.randn(200) * 3
    ff = model.trm_encoder.layer[0].feed_forward
    assert ff.intermediate_act_fn is F.gelu
    assert torch.allclose(ff.intermediate_act_fn(x), FeedForward.gelu(None, x), atol=1e-6)


def test_chunked_kernels_run_under_autocast_in_the_tables_precision(tiny_data, workdir):
    """RecBole's enable_amp trains inside torch.autocast (bfloat16 on CPU): the chunked loss and
    KD score kernels compute in the item table's float32 (same values as without autocast), take
    half-precision hidden states, and a model trains with enable_amp end to end."""
    from recbole_kd.fused import ItemScores, linear_cross_entropy
    from recbole_kd.quick_start import run

    torch.manual_seed(0)
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    bias = torch.randn(30, requires_grad=True)
    targets = torch.randint(0, 30, (40,))
    top = torch.randint(0, 30, (40, 5))

    def losses():
        x = ItemScores(hidden, weight, bias, prefetch=(top,))
        return linear_cross_entropy(hidden, weight, targets, bias), x.log_softmax().gather(1, top).sum()

    def rows_path():  # ids outside the prefetch, per-row dot products (large-catalogue rule)
        x = ItemScores(hidden, weight, bias)
        x.gather_products_per_id = 0
        return x.gather(1, top), x.log_softmax().gather(1, top), x.full()

    plain = losses() + rows_path()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = losses() + rows_path()
    for a, b in zip(plain, mixed):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    half = hidden.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(half, weight, targets, bias) + ItemScores(half, weight, bias).logsumexp().mean()
    loss.backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
    assert torch.isfinite(weight.grad).all()

    res = run("SASRec-S", "tiny", overrides={"data_path": tiny_data, "epochs": 1, "enable_amp": True,
                                             "show_progress": False, "state": "WARNING"})
    assert res["test_result"]["ndcg@10"] >= 0


def test_contrastive_loss_pairs_each_windows_last_state_across_two_passes(tiny_data, workdir):
    """DuoRec-style contrast: the positive of window b's last owned state in pass 1 is the same state in
    pass 2; aligned passes give a lower loss than shuffled ones, and the loss trains the encoder."""
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_model

    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": tiny_data, "state": "WARNING", "cl_weight": 0.5})
    _, train, _, _ = prepare(cfg)
    model = get_model("SASRec-S")(cfg, train.dataset)
    # rows of 3, 0 (nothing owned) and 2 owned positions: the last ones are flat rows 2 and 4
    mask = torch.tensor([[True, True, True], [False, False, False], [False, True, True]])
    base = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4]), 8).float() * 5
    hidden = base.clone().requires_grad_(True)
    aligned = model.contrastive_loss(hidden, base, mask)
    swapped = model.contrastive_loss(hidden, base[[0, 1, 4, 3, 2]], mask)  # the two last states exchanged
    assert aligned < 0.01 < swapped
    aligned.backward()
    assert hidden.grad is not None
    # the training loss: the main term plus cl_weight x the contrast of two dropout passes, both finite
    loader = model.build_train_dataloader(cfg, train)
    main, contrast = model.calculate_loss(next(iter(loader)))
    assert torch.isfinite(main) and torch.isfinite(contrast) and contrast > 0
    contrast.backward()
    assert model.trm_encoder.layer[0].feed_forward.dense_1.weight.grad.abs().sum() > 0
    from recbole_kd.config import ConfigError

    with pytest.raises(ConfigError, match="cl_weight"):
        get_model("SASRec-S")(build_config("SASRec-S", "tiny", overrides={"data_path": tiny_data, "cl_weight": -1}),
                              train.dataset)


def test_contrastive_regulariser_trains_a_teacher_and_is_refused_for_a_kd_student(tiny_data, workdir):
    from recbole_kd.config import ConfigError
    from recbole_kd.quick_start import run

    common = {"data_path": tiny_data, "epochs": 1, "show_progress": False, "state": "WARNING"}
    res = run("SASRec-L", "tiny", overrides={**common, "hidden_size": 32, "inner_size": 64, "cl_weight": 0.1})
    assert res["config"]["cl_weight"] == 0.1 and 0 <= res["test_result"]["ndcg@10"] <= 1
    assert "cl_weight" not in run("SASRec-S", "tiny", overrides=common)["config"]  # off: not recorded
    with pytest.raises(ConfigError, match="cl_weight"):
        run("KD-SASRec", "tiny", overrides={**common, "cl_weight": 0.1, "teacher_config": {"hidden_size": 32}})


@pytest.mark.parametrize("name", ["SASRec-S", "BERT4Rec-L"])
def test_fused_attention_scores_like_recboles_and_trains_exactly_as_recbole(name, tmp_path):
    """Evaluation goes through scaled_dot_product_attention: the same hidden states and full-sort
    scores as RecBole's attention (float rounding). Training is RecBole's forward, dropout included."""
    from conftest import write_tiny_dataset
    from recbole.model.layers import MultiHeadAttention

    from recbole_kd.config import build_config
    from recbole_kd.models.attention import FusedMultiHeadAttention, set_fused_attention
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry

    data = write_tiny_dataset(tmp_path, n_users=120, min_len=3, max_len=40)
    cfg = build_config(name, "tiny", overrides={"data_path": data, "state": "WARNING", "MAX_ITEM_LIST_LENGTH": 30})
    _, train, _, test = prepare(cfg)
    model = get_entry(name).cls(cfg, train.dataset)
    layers = [layer.multi_head_attention for layer in model.trm_encoder.layer]
    assert all(type(a) is FusedMultiHeadAttention and a.fused for a in layers)
    inter = test.dataset.inter_feat
    seq, lens = inter[model.ITEM_SEQ], inter[model.ITEM_SEQ_LEN]
    assert int(lens.min()) < 5 < int(lens.max())  # padded rows

    def outputs(fused, training):
        set_fused_attention(model.trm_encoder, fused)
        model.train(training)
        torch.manual_seed(7)
        with torch.no_grad():
            return model.encode(seq[:, : int(lens.max())])

    torch.testing.assert_close(outputs(True, False), outputs(False, False), rtol=1e-5, atol=1e-5)
    # training: RecBole's own forward, the same dropout draws, bit for bit
    assert torch.equal(outputs(True, True), outputs(False, True))
    plain = MultiHeadAttention.forward
    MultiHeadAttention.forward = lambda *a: (_ for _ in ()).throw(AssertionError("RecBole path used in eval"))
    try:
        outputs(True, False)  # evaluation never reaches RecBole's attention
        with pytest.raises(AssertionError, match="RecBole path"):
            outputs(True, True)
        with pytest.raises(AssertionError, match="RecBole path"):
            outputs(False, False)  # fused_attention: False
    finally:
        MultiHeadAttention.forward = plain
    # full-sort scoring: the last layer runs at each row's scored position only, same numbers
    def last(fused):
        set_fused_attention(model.trm_encoder, fused)
        model.eval()
        with torch.no_grad():
            return model.last_hidden(seq, lens)

    shapes = []
    hook = model.trm_encoder.layer[-1].feed_forward.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    fast, slow = last(True), last(False)
    hook.remove()
    assert shapes == [(len(seq), 1, model.hidden_size), (len(seq), seq.size(1), model.hidden_size)]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # the setting reaches the model; checkpoints keep RecBole's keys
    off = get_entry(name).cls(build_config(name, "tiny", overrides={"data_path": data, "state": "WARNING",
                                                                     "fused_attention": False}), train.dataset)
    assert not any(layer.multi_head_attention.fused for layer in off.trm_encoder.layer)
    assert set(off.state_dict()) == set(model.state_dict())
