"""The README's "Your own model" examples run as printed, and their numbers hold: MSP's AUROC
against scikit-learn on a NumPy softmax, the array path equal to the function path, and the
printed tables close to what the README shows."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

README = Path(__file__).parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}")
    return text[start : text.index("\n### ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def table(printed: str) -> dict[str, float]:
    """score name -> AUROC, from format_metrics' text."""
    rows = [line.split() for line in printed.strip().splitlines()[1:]]
    return {row[0]: float(row[1]) for row in rows}


@pytest.fixture(scope="module")
def own_model():
    text = section("Your own model")
    code, outputs = blocks(text, "python"), blocks(text, "text")
    assert len(code) == 2 and len(outputs) == 2
    namespace, printed = {}, []
    for block in code:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), namespace)
        printed.append(out.getvalue())
        namespace[f"rows{len(printed)}"] = dict(namespace["rows"])
    return namespace, printed, outputs


def test_msp_auroc_matches_scikit_learn_on_a_numpy_softmax(own_model):
    ns, _, _ = own_model
    msp = [-softmax(ns[f], axis=-1).max(-1) for f in ("known_logits", "unknown_logits")]
    labels = np.r_[np.zeros(len(msp[0])), np.ones(len(msp[1]))]
    want = roc_auc_score(labels, np.r_[msp[0], msp[1]])
    assert ns["rows1"]["MaxSoftmax"]["auroc"] == pytest.approx(want, abs=1e-9)


def test_the_array_path_scores_as_the_function_path(own_model):
    ns, _, _ = own_model
    for name in ("MaxSoftmax", "Energy", "OpenMax"):
        assert ns["rows2"][name] == pytest.approx(ns["rows1"][name], abs=1e-6)


def test_the_printed_tables_are_close_to_the_readme(own_model):
    # Training runs on this machine's CPU, so the last digits may differ from the README's.
    _, printed, shown = own_model
    for got, want in zip(printed, shown, strict=True):
        got, want = table(got), table(want)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=0.02), name
