import math

import pytest
import torch

from micacl_layers.metrics import ConfusionMatrix, confusion_matrix, per_class_recall, uar, war


def brute_cm(preds, targets, k):
    cm = [[0] * k for _ in range(k)]
    for p, t in zip(preds.tolist(), targets.tolist(), strict=True):
        cm[t][p] += 1
    return torch.tensor(cm, dtype=torch.int64)


def brute_uar(preds, targets, k):
    recalls = []
    for c in range(k):
        idx = [i for i, t in enumerate(targets.tolist()) if t == c]
        if idx:
            recalls.append(sum(preds[i].item() == c for i in idx) / len(idx))
    return sum(recalls) / len(recalls)


def test_hand_computed_case():
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    targets = torch.tensor([0, 1, 1, 1, 2, 0, 2, 0])
    cm = confusion_matrix(preds, targets, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 0, 1], [1, 2, 0], [0, 0, 2]]
    torch.testing.assert_close(
        per_class_recall(cm), torch.tensor([2 / 3, 2 / 3, 1.0], dtype=torch.float64)
    )
    assert war(cm) == pytest.approx(6 / 8)
    assert uar(cm) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k = 7
    # Long-tailed targets so WAR and UAR differ.
    probs = torch.tensor([30.0, 20, 25, 15, 8, 1, 4])
    targets = torch.multinomial(probs, 400, replacement=True, generator=g)
    preds = torch.where(
        torch.rand(400, generator=g) < 0.6, targets, torch.randint(0, k, (400,), generator=g)
    )
    cm = confusion_matrix(preds, targets, k)
    assert torch.equal(cm, brute_cm(preds, targets, k))
    assert war(cm) == pytest.approx((preds == targets).double().mean().item())
    assert uar(cm) == pytest.approx(brute_uar(preds, targets, k))
    assert cm.sum().item() == 400


def test_perfect_and_worst_predictor():
    targets = torch.tensor([0, 1, 2, 2, 3, 3, 3])
    cm = confusion_matrix(targets, targets, 4)
    assert war(cm) == 1.0 and uar(cm) == 1.0
    cm = confusion_matrix((targets + 1) % 4, targets, 4)
    assert war(cm) == 0.0 and uar(cm) == 0.0


def test_absent_classes_are_nan_and_left_out_of_uar():
    cm = confusion_matrix(torch.tensor([0, 0, 2, 1]), torch.tensor([0, 0, 2, 2]), 4)
    recall = per_class_recall(cm)
    assert recall[0] == 1.0 and recall[2] == 0.5
    assert math.isnan(recall[1]) and math.isnan(recall[3])
    assert uar(cm) == pytest.approx(0.75)
    # A present class that is never right counts as 0, not dropped.
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert uar(cm) == pytest.approx(0.5)


def test_war_uar_differ_on_imbalance():
    targets = torch.tensor([0] * 9 + [1])
    preds = torch.zeros(10, dtype=torch.long)
    cm = confusion_matrix(preds, targets, 2)
    assert war(cm) == pytest.approx(0.9)
    assert uar(cm) == pytest.approx(0.5)


def test_empty_matrix_is_an_error():
    cm = torch.zeros(3, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="no sample"):
        war(cm)
    with pytest.raises(ValueError, match="no sample"):
        uar(cm)
    assert (
        confusion_matrix(
            torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3
        ).sum()
        == 0
    )


@pytest.mark.parametrize(
    "dtype",
    [torch.int32, torch.uint8, torch.int16, torch.int8, torch.uint16, torch.uint32, torch.uint64],
)
def test_integer_dtypes_accepted(dtype):
    t = torch.tensor([0, 1, 2], dtype=dtype)
    assert confusion_matrix(t, t, 3).trace() == 3
    # (torch has no min/max for uint16-64 on the CPU: the range check must still work.)
    with pytest.raises(ValueError, match="holds class index 7"):
        confusion_matrix(t, torch.tensor([0, 1, 7], dtype=dtype), 3)
    m = ConfusionMatrix(3)
    m.update(torch.eye(3), t)
    assert m.war == 1.0


def test_input_validation_messages():
    t = torch.tensor([0, 1, 2])
    with pytest.raises(
        ValueError,
        match=r"`targets` \(shape=\(3,\), dtype=torch.int64\) holds "
        r"class index 7, expected indices in \[0, 2\]",
    ):
        confusion_matrix(t, torch.tensor([0, 1, 7]), 3)
    with pytest.raises(ValueError, match=r"preds.*class index -1"):
        confusion_matrix(torch.tensor([0, -1, 2]), t, 3)
    with pytest.raises(ValueError, match=r"`preds` must be 1-D.*shape=\(3, 1\)"):
        confusion_matrix(t.view(3, 1), t, 3)
    with pytest.raises(TypeError, match=r"`preds` must hold integer.*float32"):
        confusion_matrix(t.float(), t, 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(t, t[:2], 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(t, t, 0)
    with pytest.raises(TypeError, match=r"`preds` must be a torch.Tensor"):
        confusion_matrix([0, 1], t, 3)
    with pytest.raises(ValueError, match=r"`cm` must be a square.*shape=\(2, 3\)"):
        war(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="negative"):
        uar(torch.tensor([[1, -1], [0, 1]]))
    with pytest.raises(ValueError, match="`cm`.*NaN or inf"):
        uar(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        confusion_matrix(t, t, True)
    # Any integer dtype is a class index (the shared check of micacl_layers._validation).
    assert torch.equal(
        confusion_matrix(t.to(torch.uint8), t.to(torch.int16), 3), confusion_matrix(t, t, 3)
    )


def test_accumulator_logits_and_indices_agree_and_accumulate():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=g)
    targets = torch.randint(0, 5, (50,), generator=g)
    from_logits, from_idx, batched = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    from_logits.update(logits, targets)
    from_idx.update(logits.argmax(1), targets)
    for chunk_l, chunk_t in zip(logits.split(7), targets.split(7), strict=True):
        batched.update(chunk_l, chunk_t)
    expected = brute_cm(logits.argmax(1), targets, 5)
    for m in (from_logits, from_idx, batched):
        assert torch.equal(m.compute(), expected)
        assert m.num_samples == 50
    assert batched.war == pytest.approx(war(expected))
    assert batched.uar == pytest.approx(uar(expected))
    torch.testing.assert_close(batched.per_class_recall, per_class_recall(expected), equal_nan=True)
    # compute() is a copy; reset() clears.
    batched.compute().zero_()
    assert batched.num_samples == 50
    batched.reset()
    assert batched.num_samples == 0
    with pytest.raises(ValueError, match="no sample"):
        _ = batched.uar


def test_accumulator_validation():
    m = ConfusionMatrix(3)
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"shape=\(2, 4\).*must have 3 scores per row"):
        m.update(torch.randn(2, 4), t)
    with pytest.raises(TypeError, match=r"1 dim must be integer.*float32"):
        m.update(torch.tensor([0.0, 1.0]), t)
    with pytest.raises(TypeError, match="2 dims must be floating"):
        m.update(torch.tensor([[0, 1, 2], [0, 1, 2]]), t)
    with pytest.raises(ValueError, match=r"shape=\(2, 3, 1\)"):
        m.update(torch.randn(2, 3, 1), t)
    with pytest.raises(ValueError, match=r"targets.*class index 3"):
        m.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    assert m.num_samples == 0  # failed updates leave no trace
    assert "num_classes=3" in repr(m)


def test_accumulator_ignores_grad_and_works_with_requires_grad():
    logits = torch.randn(4, 3, requires_grad=True)
    m = ConfusionMatrix(3)
    m.update(logits, torch.tensor([0, 1, 2, 0]))
    assert m.num_samples == 4


def test_meta_tensors_give_a_clear_error():
    # A meta tensor holds no values to count: an error naming the argument, not torch's
    # "Tensor.item() cannot be called on meta tensors" from inside the range check.
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"`preds` .*meta"):
        confusion_matrix(t.to("meta"), t, 3)
    with pytest.raises(ValueError, match=r"`targets` .*meta"):
        confusion_matrix(t, t.to("meta"), 3)
    for metric in (war, uar, per_class_recall):
        with pytest.raises(ValueError, match=r"`cm` .*meta"):
            metric(torch.ones(3, 3, device="meta"))
    m = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"`preds_or_logits` .*meta"):
        m.update(torch.randn(3, 3, device="meta"), t)
    with pytest.raises(ValueError, match=r"`targets` .*meta"):
        m.update(torch.randn(3, 3), t.to("meta"))
    assert m.num_samples == 0


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_count_matrices_of_wide_unsigned_dtypes_are_read(dtype):
    # A confusion matrix from numpy (np.uint64 counts through torch.from_numpy) is integer
    # counts: torch has no comparison for uint16-64, which made the negativity check a
    # NotImplementedError from inside torch.
    cm = torch.tensor([[3, 1], [2, 4]], dtype=dtype)
    assert war(cm) == pytest.approx(0.7)
    assert uar(cm) == pytest.approx((3 / 4 + 4 / 6) / 2)
    torch.testing.assert_close(per_class_recall(cm), torch.tensor([0.75, 4 / 6]).double())
    big = torch.tensor([[2**63 + 2, 0], [0, 2**63 + 2]], dtype=torch.uint64)  # not negative
    assert war(big) == 1.0 and uar(big) == 1.0


def test_accumulator_errors_name_what_was_passed():
    # The logits' length and the 1-D predictions' values were reported as `preds` of the
    # arg-max's shape (B,), an argument the caller never passed.
    m = ConfusionMatrix(3)
    with pytest.raises(
        ValueError,
        match=r"`preds_or_logits` \(shape=\(4, 3\), dtype=torch.float32\) and `targets` "
        r"\(shape=\(3,\), dtype=torch.int64\) must hold as many samples",
    ):
        m.update(torch.randn(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"`preds_or_logits` \(shape=\(2,\).*class index 5"):
        m.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"`preds_or_logits` must hold integer.*bool"):
        m.update(torch.tensor([True, False]), torch.tensor([0, 1]))
    assert m.num_samples == 0


def test_a_uint64_index_past_int64_is_reported_as_itself():
    # The range check reads indices as int64, where 2**63 + 5 wraps to a negative number: the
    # message named class index -9223372036854775803, a value the caller never passed.
    bad = torch.tensor([0, 2**63 + 5], dtype=torch.uint64)
    with pytest.raises(ValueError, match=rf"holds class index {2**63 + 5}, expected"):
        confusion_matrix(bad, torch.tensor([0, 1], dtype=torch.uint64), 3)


def test_sparse_inputs_are_refused_by_name():
    # They were NotImplementedError (or RuntimeError) from inside torch's min, argmax or ne.
    dense = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"`preds` \(shape=\(2,\).*\) is a sparse_coo tensor"):
        confusion_matrix(dense.to_sparse(), dense, 2)
    with pytest.raises(ValueError, match=r"`preds_or_logits` .* is a sparse_coo tensor"):
        ConfusionMatrix(2).update(torch.eye(2).to_sparse(), dense)
    for cm in (torch.eye(2).to_sparse(), torch.eye(2).to_sparse_csr()):
        with pytest.raises(ValueError, match=r"`cm` .* is a sparse_(coo|csr) tensor.*to_dense"):
            uar(cm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_a_wrong_label_dtype_is_a_type_error_as_in_the_losses(dtype):
    # The losses raise TypeError for float/bool targets; the metrics raised ValueError for the
    # same mistake, so one `except TypeError` around a training step missed the evaluation.
    from micacl_layers import IntensityAwareLoss

    y = torch.tensor([0, 1, 2, 0])
    bad = y.to(dtype)
    with pytest.raises(TypeError) as from_loss:
        IntensityAwareLoss()(torch.randn(4, 3), bad)
    with pytest.raises(TypeError) as from_metric:
        confusion_matrix(y, bad, 3)
    assert str(from_metric.value) == str(from_loss.value)
    with pytest.raises(TypeError, match=r"`preds` must hold integer class indices"):
        confusion_matrix(bad, y, 3)
    m = ConfusionMatrix(3)
    with pytest.raises(TypeError) as from_update:
        m.update(torch.randn(4, 3), bad)
    assert str(from_update.value) == str(from_loss.value)
    # (1-D float preds are likely scores: their message says to pass the (B, K) logits.)
    expected = "with 1 dim must be integer" if dtype.is_floating_point else "must hold integer"
    with pytest.raises(TypeError, match=rf"`preds_or_logits` {expected}"):
        m.update(bad, y)
    with pytest.raises(TypeError, match=r"`preds_or_logits` with 2 dims must be floating"):
        m.update(torch.eye(4, 3, dtype=torch.int64), y)
    assert m.num_samples == 0


def _some_counts(k=3):
    m = ConfusionMatrix(k)
    g = torch.Generator().manual_seed(0)
    m.update(torch.randn(20, k, generator=g), torch.randint(0, k, (20,), generator=g))
    return m


def test_counts_are_checkpointed_through_torch_save(tmp_path):
    # A run stopped mid-epoch lost its running counts: the metric had no state_dict.
    m = _some_counts()
    path = tmp_path / "metric.pt"
    torch.save(m.state_dict(), path)
    restored = ConfusionMatrix(3)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.compute(), m.compute())
    assert restored.compute().dtype == torch.int64 and restored.num_samples == 20
    assert (restored.war, restored.uar) == (m.war, m.uar)
    # Counting goes on from the restored state.
    for metric in (m, restored):
        metric.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert torch.equal(restored.compute(), m.compute())
    # The state is a copy both ways: counting on does not change a saved or a loaded dict.
    state = m.state_dict()
    restored.load_state_dict(state)
    m.update(torch.tensor([0]), torch.tensor([0]))
    restored.update(torch.tensor([0]), torch.tensor([0]))
    assert int(state["counts"].sum()) == 22


def test_a_model_holding_the_metric_neither_saves_nor_broadcasts_it():
    # An nn.Module metric would enter its model's state_dict (breaking strict loads of older
    # checkpoints) and its buffers would be broadcast from rank 0 by DDP, silently replacing
    # every other rank's counts: the metric keeps its own state_dict, as an optimizer does.
    model = torch.nn.Linear(2, 2)
    model.metric = _some_counts()
    assert set(model.state_dict()) == {"weight", "bias"}
    assert not any(b is model.metric.compute() for b in model.buffers())


def test_counts_stay_on_the_cpu_under_a_default_device():
    with torch.device("meta"):
        m = ConfusionMatrix(3)
    m.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert m.compute().device.type == "cpu" and m.num_samples == 2


@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        (
            torch.zeros(4, 4, dtype=torch.int64),
            ValueError,
            r"state_dict\['counts'\] \(shape=\(4, 4\), dtype=torch.int64\) is a confusion matrix "
            r"of num_classes=4; this ConfusionMatrix has num_classes=3",
        ),
        (torch.zeros(9, dtype=torch.int64), ValueError, r"expected shape \(3, 3\)"),
        (torch.ones(3, 3), TypeError, r"state_dict\['counts'\] must hold integer counts.*float32"),
        (torch.ones(3, 3, dtype=torch.bool), TypeError, "must hold integer counts"),
        (-torch.ones(3, 3, dtype=torch.int64), ValueError, r"state_dict\['counts'\].*negative"),
        # From 2**63 on a uint64 count wrapped to a negative int64 and was loaded as one.
        (torch.full((3, 3), 2**63 + 5, dtype=torch.uint64), ValueError, "counts past int64"),
        # Sparse counts were NotImplementedError from inside torch's comparison.
        (
            torch.eye(3, dtype=torch.int64).to_sparse(),
            ValueError,
            r"state_dict\['counts'\] .* is a sparse_coo tensor.*to_dense",
        ),
    ],
)
def test_loaded_counts_that_do_not_fit_are_refused_by_name(counts, error, match):
    m = _some_counts()
    before = m.compute()
    with pytest.raises(error, match=match):
        m.load_state_dict({"num_classes": 3, "counts": counts})
    assert torch.equal(m.compute(), before)  # a refused load leaves the counts as they were


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        (
            {"num_classes": 4, "counts": torch.zeros(4, 4, dtype=torch.int64)},
            ValueError,
            r"state_dict\['num_classes'\] is 4; this ConfusionMatrix has num_classes=3",
        ),
        (
            {"num_classes": "3", "counts": torch.zeros(3, 3, dtype=torch.int64)},
            ValueError,
            r"is '3'; this ConfusionMatrix has num_classes=3 \(an int\)",
        ),
        (
            {"num_classes": 3.0, "counts": torch.zeros(3, 3, dtype=torch.int64)},
            ValueError,
            r"is 3.0; this ConfusionMatrix has num_classes=3 \(an int\)",
        ),
        (torch.zeros(3, 3, dtype=torch.int64), TypeError, "must be a ConfusionMatrix.state_dict"),
        ({"num_classes": 3}, TypeError, "a mapping with a 'counts' tensor"),
        (
            {"counts": torch.zeros(3, 3, dtype=torch.int64, device="meta")},
            ValueError,
            "holds no values",
        ),
    ],
)
def test_a_state_that_is_no_metric_state_is_refused(state, error, match):
    m = _some_counts()
    with pytest.raises(error, match=match):
        m.load_state_dict(state)


def test_loaded_counts_of_another_integer_dtype_are_kept_int64():
    m = ConfusionMatrix(2)
    state = {"counts": torch.tensor([[3, 1], [0, 2]], dtype=torch.int32)}
    m.load_state_dict(state)
    assert m.compute().dtype == torch.int64 and m.compute().tolist() == [[3, 1], [0, 2]]
    assert state["counts"].dtype == torch.int32  # the caller's dict is left as it was
