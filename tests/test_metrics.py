import numpy as np
import pytest
import scipy.linalg
import torch

from elt.metrics import FeatureClassifier, feature_stats, frechet_distance
from elt.engine.media import save_grid


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_frechet_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(500, dim))
    b = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 1.0
    mine = frechet_distance(*feature_stats(a), *feature_stats(b))
    ref = scipy_frechet(*feature_stats(a), *feature_stats(b))
    assert mine == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_frechet_of_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.3
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance(*sa, *sa) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-8)
    # pure mean shift: FD = ‖Δμ‖²
    assert frechet_distance(sa[0], sa[1], sa[0] + 2.0, sa[1]) == pytest.approx(4.0 * 8, rel=1e-8)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))


@pytest.mark.parametrize("size", [8, 28])
def test_classifier_shapes(size):
    clf = FeatureClassifier(size, 1, 10)
    feats, preds = clf.features_and_predictions(torch.rand(5, 1, size, size))
    assert feats.shape == (5, 128) and feats.dtype == np.float64 and preds.shape == (5,)


def test_save_grid(tmp_path):
    from PIL import Image

    imgs = np.zeros((6, 8, 8, 1), dtype=np.uint8)
    save_grid(imgs, 2, 3, tmp_path / "g.png", pad=2)
    assert Image.open(tmp_path / "g.png").size == (3 * 10 + 2, 2 * 10 + 2)
    with pytest.raises(ValueError):
        save_grid(imgs, 2, 2, tmp_path / "bad.png")


def test_metric_classifier_near_chance_on_real_data_is_flagged(caplog):
    from elt.engine.evaluation import warn_near_chance

    with caplog.at_level("WARNING", logger="elt"):
        weak = warn_near_chance({"acc_a": 0.12, "acc_b": 0.9, "fd_a": 0.0}, 10, 0.2)
    assert weak == ["acc_a"] and "eval.classifier_epochs" in caplog.text and "acc_b" not in caplog.text
