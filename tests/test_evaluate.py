"""The evaluation table on a model trained on digits: every score's sign, the table's content
against the metrics computed directly, JSON round trip, the printed table; and on an untrained
tiny model, the splits and scores it refuses."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from jacosr.data import OpenSetData, Split
from jacosr.evaluate import SCORE_METRICS, EvalConfig, evaluate, format_table, predict
from jacosr.losses import LossConfig
from jacosr.metrics import metric_auroc, metric_dbi, metric_macro_f1, metric_oscr
from jacosr.models import ModelConfig, OpenSetNet, split_model
from jacosr.scores import SCORES, score_loss
from jacosr.train import load_run


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
    assert set(table) == {"accuracy", "split", "eval", "embedding", "scores"}
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


@pytest.mark.parametrize("empty", ["unknown_test", "known_test", "known_val"])
def test_an_empty_split_is_a_clear_error(tiny, empty):
    graphdef, state, data = tiny
    x, y = getattr(data, empty)
    data = dataclasses.replace(data, **{empty: Split(x[:0], y[:0])})
    with pytest.raises(ValueError, match=rf"^cannot evaluate .*: {empty} holds no samples; the"):
        evaluate(graphdef, state, data, LossConfig(), EvalConfig(scores=("msp",)))


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
