"""lofi.probe (behind tools/probe_features.py): the foreground labels of snippets, ROC AUC against its pairwise
definition, and the two probes on features whose answer is known (separable, label-independent noise, class
clusters)."""
import numpy as np
import pytest

from lofi import probe as P


def test_foreground_uses_snippet_centres_in_seconds():
    meta = {"duration": 10.0, "annotations": [{"segment": [2.0, 5.0], "label": "a"}, {"segment": [9.4, 10.0]}]}
    # 10 snippets of 1 s: centres 0.5, 1.5, ..., 9.5 s
    assert P.foreground(meta, 10).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]
    assert P.foreground({"duration": 4.0}, 4).tolist() == [0, 0, 0, 0]


def test_roc_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = (rng.random(60) < 0.4).astype(float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert P.roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    with pytest.raises(ValueError):
        P.roc_auc(scores, np.ones(60))


def test_logistic_probe_finds_a_separating_direction_and_not_noise():
    rng = np.random.default_rng(1)
    y_train, y_val = (rng.random(400) < 0.5).astype(float), (rng.random(400) < 0.5).astype(float)
    noise_train, noise_val = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    signal_train, signal_val = noise_train.copy(), noise_val.copy()
    signal_train[:, 3] += 3 * y_train
    signal_val[:, 3] += 3 * y_val
    _, val = P.logistic_probe(signal_train, y_train, signal_val)
    assert P.roc_auc(val, y_val) > 0.95
    _, val = P.logistic_probe(noise_train, y_train, noise_val)
    assert abs(P.roc_auc(val, y_val) - 0.5) < 0.1


def test_nearest_class_mean_on_clusters():
    rng = np.random.default_rng(2)
    centres = {"a": np.zeros(8), "b": np.full(8, 4.0), "c": np.r_[np.full(4, 4.0), np.zeros(4)]}
    draw = lambda n: [(centres[c] + rng.normal(scale=0.3, size=8), c) for c in centres for _ in range(n)]  # noqa: E731
    assert P.nearest_class_mean(draw(10), draw(5)) == 1.0
