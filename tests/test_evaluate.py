"""The evaluation table on a model trained on digits: every score's sign, the table's content
against the metrics computed directly, JSON round trip, the printed table; and on an untrained
tiny model, the splits and scores it refuses."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jacosr import jacobian
from jacosr.data import OpenSetData, Split, to_float
from jacosr.evaluate import (
    SCORE_METRICS,
    EvalConfig,
    evaluate,
    format_table,
    predict,
    subset_indices,
)
from jacosr.geometry import metric_dbi
from jacosr.losses import LossConfig
from jacosr.metrics import (
    metric_auroc,
    metric_fpr_at_tpr,
    metric_macro_f1,
    metric_oscr,
)
from jacosr.models import ModelConfig, OpenSetNet, embedding_fn, split_model
from jacosr.runs import load_run
from jacosr.scores import SCORES, ScoreConfig, score_loss


@pytest.fixture(scope="module")
def trained(digits_run):
    """The default run (digits, known 0..5, m-OvR, 2,000 steps), shared by the suite."""
    config, data, graphdef, state = load_run(digits_run[0])
    return config, data, graphdef, state


@pytest.fixture(scope="module")
def table(trained):
    config, data, graphdef, state = trained
    return evaluate(graphdef, state, data, config.loss, EvalConfig(scores=tuple(SCORES)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCORES))
def test_score_sign_every_score_beats_chance(table, name):
    """Higher = more likely unknown: a flipped sign would put the AUROC below 0.5."""
    assert table["scores"][name]["auroc"] > 0.5


@pytest.mark.slow
def test_table_is_tidy_json_and_prints(table, trained):
    _, data, _, _ = trained
    # jnd: the jacobian score is among them
    assert set(table) == {"accuracy", "split", "eval", "embedding", "scores", "subsets", "jnd"}
    assert table["subsets"] == {}  # digits' splits are below the Jacobian sample cap
    assert table["split"] == data.describe()
    assert list(table["scores"]) == list(SCORES)
    for row in table["scores"].values():
        assert list(row) == list(SCORE_METRICS)
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert row["oscr"] <= table["accuracy"] + 1e-12
    assert set(table["embedding"]) == {"dbi", "inter_class_distance", "intra_inter_ratio"}
    assert json.loads(json.dumps(table)) == table
    text = format_table(table)
    for name in SCORES:
        assert name in text
    assert f"{table['accuracy']:.4f}" in text


@pytest.mark.slow
def test_the_jnd_is_that_of_the_exact_norms(table, trained):
    """Eq. 20 from norms computed here, on their own path: the unknown mean minus the known."""
    _, data, graphdef, state = trained
    f = embedding_fn(graphdef, state)
    known, unknown = (
        jacobian.jacobian_norms(f, to_float(s.x)) for s in (data.known_test, data.unknown_test)
    )
    jnd = table["jnd"]
    assert jnd["estimate"] == pytest.approx(unknown.mean() - known.mean(), rel=1e-5)
    assert jnd["low"] < jnd["estimate"] < jnd["high"]
    assert "Jacobian norm difference (Eq. 20)" in format_table(table)
    assert "jnd" not in evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("msp",)))


@pytest.mark.slow
def test_table_agrees_with_the_metrics_computed_directly(table, trained):
    config, data, graphdef, state = trained
    out = {
        k: predict(graphdef, state, s.x)
        for k, s in (
            ("val", data.known_val),
            ("known", data.known_test),
            ("unknown", data.unknown_test),
        )
    }
    s = {k: np.asarray(score_loss(o, config.loss)) for k, o in out.items()}
    pred = {k: np.argmax(o.class_scores, -1) for k, o in out.items()}
    y = data.known_test.y
    row = table["scores"]["loss"]
    np.testing.assert_allclose(row["auroc"], metric_auroc(s["known"], s["unknown"]))
    np.testing.assert_allclose(
        row["oscr"], metric_oscr(s["known"], pred["known"] == y, s["unknown"])
    )
    f1 = metric_macro_f1(
        s["val"], s["known"], pred["known"], y, s["unknown"], pred["unknown"], num_known_classes=6
    )
    np.testing.assert_allclose(row["macro_f1"], f1)
    np.testing.assert_allclose(table["embedding"]["dbi"], metric_dbi(out["known"].embedding, y))
    np.testing.assert_allclose(table["accuracy"], np.mean(pred["known"] == y))


def test_unknown_score_fails_before_any_work():
    with pytest.raises(ValueError, match=r"--scores must be names out of .*openmax; got 'odin'"):
        EvalConfig(scores=("loss", "odin"))


# --- refused inputs, on an untrained tiny model and hand-made splits ----------------------


@pytest.fixture(scope="module")
def tiny():
    """An untrained 2-class MLP on 4x4x1 inputs, and a hand-made split of 5 samples each."""
    model = OpenSetNet(
        ModelConfig(width=8, embed_dim=4),
        image_shape=(4, 4, 1),
        num_classes=2,
        head="cosine",
        rngs=nnx.Rngs(0),
    )
    graphdef, state = split_model(model)
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.uniform(-1, 1, (n, 4, 4, 1)).astype(np.float32)
        return Split(x, (np.arange(n) % 2).astype(np.int32))

    data = OpenSetData(split(5), split(5), split(5), split(5), (0, 1), (2,), 0, "hand-made")
    return graphdef, state, data


@pytest.mark.parametrize("empty", ["unknown_test", "known_test"])
def test_an_empty_split_is_a_clear_error(tiny, empty):
    graphdef, state, data = tiny
    x, y = getattr(data, empty)
    data = dataclasses.replace(data, **{empty: Split(x[:0], y[:0])})
    with pytest.raises(ValueError, match=rf"^cannot evaluate .*: {empty} holds no samples; the"):
        evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("msp",)))


def test_without_known_val_there_is_no_macro_f1_and_the_rest_is_unchanged(tiny):
    """Protocol A has no known-val (val_fraction 0): every other metric is reported as with
    one, macro-F1 is left out (the table stays strict JSON) and the printed table drops it."""
    graphdef, state, data = tiny
    config = EvalConfig(scores=("msp", "loss"))
    full = evaluate(graphdef, state, data, LossConfig(), config)
    x, y = data.known_val
    no_val = dataclasses.replace(data, known_val=Split(x[:0], y[:0]))
    table = evaluate(graphdef, state, no_val, LossConfig(), config)
    for name in ("msp", "loss"):
        assert list(table["scores"][name]) == [m for m in SCORE_METRICS if m != "macro_f1"]
        assert table["scores"][name] == {
            m: v for m, v in full["scores"][name].items() if m != "macro_f1"
        }
    json.dumps(table, allow_nan=False)
    header = format_table(table).splitlines()[2].split()
    assert header == ["score", "auroc", "aupr_in", "aupr_out", "fpr95", "oscr"]
    assert format_table(full).splitlines()[2].split()[-1] == "macro_f1"


def test_an_empty_known_train_is_refused_only_when_a_score_fits_on_it(tiny):
    graphdef, state, data = tiny
    x, y = data.known_train
    data = dataclasses.replace(data, known_train=Split(x[:0], y[:0]))
    with pytest.raises(ValueError, match=r": known_train holds no samples; .*fits OpenMax"):
        evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("openmax",)))
    table = evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("msp",)))
    assert set(table["scores"]) == {"msp"}


@pytest.mark.parametrize(
    ("split", "name", "count"),
    [("unknown_test", "unknown-test", 2), ("known_val", "known-val", 1)],
)
def test_non_finite_scores_name_the_score_the_split_and_the_count(tiny, split, name, count):
    """NaN inputs (as a diverged model's NaN outputs) give NaN scores: refused, not averaged."""
    graphdef, state, data = tiny
    x, y = getattr(data, split)
    x = x.copy()
    x[:count] = np.nan
    data = dataclasses.replace(data, **{split: Split(x, y)})
    with pytest.raises(
        ValueError, match=rf"^score 'energy' is NaN or infinite for {count} of 5 {name} samples;"
    ):
        evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("energy",)))


# --- the Jacobian scores on big test sets: a seeded subset of each split --------------------


@pytest.mark.parametrize(("n", "cap"), [(10, 4), (10, 10), (3, 5), (7, 0)])
def test_subset_indices_are_a_seeded_sorted_sample(n, cap):
    idx = subset_indices(n, cap, (0, 1))
    expected = np.arange(n) if cap in (0, n) or n < cap else None
    if expected is None:
        assert len(idx) == cap and len(set(idx)) == cap and 0 <= idx.min() and idx.max() < n
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, subset_indices(n, cap, (0, 1)))
        assert not all(np.array_equal(idx, subset_indices(n, cap, (s, 1))) for s in range(1, 5))
    else:
        np.testing.assert_array_equal(idx, expected)


def test_jacobian_scores_use_a_seeded_subset_of_each_split(tiny):
    """Above the cap, the Jacobian row is computed on the documented subset alone (its norms
    against dense jacfwd, its predictions and labels subset alike); the other scores see every
    sample; the results and the printed table say so."""
    graphdef, state, data = tiny
    config = EvalConfig(scores=("msp", "jacobian"), score=ScoreConfig(jacobian_max_samples=3))
    table = evaluate(graphdef, state, data, LossConfig(), config)
    assert table["subsets"] == {"jacobian": {"known_val": 3, "known_test": 3, "unknown_test": 3}}
    jac = jax.jit(jax.vmap(jax.jacfwd(embedding_fn(graphdef, state))))

    def norms(split, i):
        keep = np.sort(np.random.default_rng((0, i)).choice(5, size=3, replace=False))
        dense = np.asarray(jac(split.x[keep])).reshape(3, -1)
        return np.linalg.norm(dense, axis=1), keep

    known, keep = norms(data.known_test, 1)
    unknown, _ = norms(data.unknown_test, 2)
    row = table["scores"]["jacobian"]
    np.testing.assert_allclose(row["auroc"], metric_auroc(known, unknown), rtol=1e-6)
    np.testing.assert_allclose(row["fpr95"], metric_fpr_at_tpr(known, unknown), rtol=1e-6)
    pred = np.argmax(predict(graphdef, state, data.known_test.x).class_scores, -1)[keep]
    correct = pred == data.known_test.y[keep]
    np.testing.assert_allclose(row["oscr"], metric_oscr(known, correct, unknown), rtol=1e-6)
    assert "macro_f1" in row
    full = evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("msp",)))
    assert table["scores"]["msp"] == full["scores"]["msp"]  # every sample
    text = format_table(table)
    assert text.splitlines()[-1] == (
        "jacobian: on a seeded subset (3 of 5 known-val, 3 of 5 known-test, 3 of 5 "
        "unknown-test; --jacobian-max-samples)"
    )
