"""The disentanglement metrics pinned on synthetic codes whose answers are known.

A full factor grid (8 x 2 x 3 x 2 classes) stands for the data set; a "code" is a function of
the rows drawn. The small sample sizes keep the file fast (DCI's boosted trees dominate).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from aevb import disentanglement as dis
from aevb.data.dsprites import grid_classes

SIZES = (8, 2, 3, 2)
F = grid_classes(SIZES)  # (96, 4): every combination once
NAMES = ("a", "b", "c", "d")
STD = (F - F.mean(0)) / F.std(0)
SMALL = dict(beta_vae_batch=16, beta_vae_train=300, beta_vae_eval=200, factor_vae_batch=16, factor_vae_train=300,
             factor_vae_eval=200, factor_vae_variance=1000, mig_points=3000, sap_train=1000, sap_test=500,
             dci_train=300, dci_test=150)


def ground_truth(codes) -> dis.GroundTruth:
    return dis.GroundTruth(F, codes, NAMES)


def identity(rows):  # the factors themselves, permuted, scaled and one flipped
    return (F[rows] * np.array([3.0, -0.5, 2.0, 10.0]))[:, [2, 0, 3, 1]]


ROTATION = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0  # mixes every factor equally


def split_code(rows):
    """Factor a (8 classes) split across two dimensions: its high bit (2 values) and its low bits (4 values)."""
    f = F[rows]
    return np.stack([f[:, 0] // 4, f[:, 0] % 4, f[:, 1], f[:, 2], f[:, 3]], 1).astype(float)


def codes_and_factors(gt, n, seed=0):
    return dis._codes_and_factors(gt, n, np.random.default_rng(seed))


def mig(codes) -> float:
    return dis.mig_from_codes(*codes_and_factors(ground_truth(codes), SMALL["mig_points"]))["mig"]


def dci(codes) -> dict:
    gt = ground_truth(codes)
    return dis.dci_from_codes(*codes_and_factors(gt, SMALL["dci_train"], 1), *codes_and_factors(gt, SMALL["dci_test"], 2))


@pytest.fixture(scope="module")
def identity_scores():
    return dis.disentanglement_scores(ground_truth(identity), seed=0, sizes=SMALL)


def test_the_factors_themselves_score_one(identity_scores):
    s = identity_scores
    assert s["factor_vae_score"] == 1.0 and s["beta_vae_score"] == 1.0
    assert s["mig"] > 0.97  # 1 up to the histogram estimator's bias
    assert s["dci_disentanglement"] > 0.99 and s["dci_completeness"] > 0.99 and s["dci_informativeness"] == 1.0
    assert set(dis.SCORE_KEYS) <= set(s) and s["factor_names"] == list(NAMES)
    # each dimension's factor: the permutation [2, 0, 3, 1], holding all of its entropy
    assert [(name, round(share, 2)) for name, share in dis.factor_of_each_dim(s)] == \
        [("c", 1.0), ("a", 1.0), ("d", 1.0), ("b", 1.0)]


def test_the_same_seed_gives_the_same_scores_and_another_seed_other_draws():
    tiny = {**SMALL, "dci_train": 60, "dci_test": 30, "sap_train": 100, "sap_test": 50}
    noisy = lambda rows: identity(rows) + np.sin(rows)[:, None] * 3  # noqa: E731  (a fixed function of the rows)
    first = dis.disentanglement_scores(ground_truth(noisy), seed=0, sizes=tiny)
    assert dis.disentanglement_scores(ground_truth(noisy), seed=0, sizes=tiny) == first
    other = dis.mig_from_codes(*dis._codes_and_factors(ground_truth(noisy), tiny["mig_points"],
                                                       np.random.default_rng((1, 2))))
    assert other["mig"] != first["mig"]  # MIG draws from default_rng((seed, 2))
    assert dis.mig_from_codes(*dis._codes_and_factors(ground_truth(noisy), tiny["mig_points"],
                                                      np.random.default_rng((0, 2))))["mig"] == first["mig"]
    gt = ground_truth(lambda rows: identity(rows) + np.random.default_rng(len(rows)).normal(0, 2, (len(rows), 4)))
    a = dis.factor_vae_score(gt, np.random.default_rng((0, 1)), 16, 100, 100, 500)
    b = dis.factor_vae_score(gt, np.random.default_rng((1, 1)), 16, 100, 100, 500)
    assert a == dis.factor_vae_score(gt, np.random.default_rng((0, 1)), 16, 100, 100, 500) and a != b


def test_a_random_rotation_scores_low():
    rotated = lambda rows: STD[rows] @ ROTATION  # noqa: E731
    assert mig(rotated) < 0.5
    assert dci(rotated)["dci_disentanglement"] < 0.6
    # the FactorVAE score only asks which dimension a fixed factor quiets most: a rotation that mixes every
    # factor into every dimension equally leaves it at chance
    mixed = ground_truth(lambda rows: STD[rows] @ HADAMARD)
    assert dis.factor_vae_score(mixed, np.random.default_rng(0), 16, 300, 200, 1000)["factor_vae_score"] < 0.5


def test_pure_noise_scores_near_zero():
    draws = np.random.default_rng(5)
    gt = ground_truth(lambda rows: draws.normal(size=(len(rows), 4)))  # a new draw every time: no information
    scores = dis.disentanglement_scores(gt, seed=0, sizes={**SMALL, "dci_train": 200, "dci_test": 100})
    assert scores["mig"] < 0.02 and scores["sap"] < 0.05
    assert scores["dci_disentanglement"] < 0.1 and scores["dci_completeness"] < 0.1
    # the two classifier scores at chance (1/4 over four factors)
    assert scores["factor_vae_score"] < 0.45 and scores["beta_vae_score"] < 0.45
    assert scores["dci_informativeness"] < 0.6


def test_a_factor_split_across_two_dimensions_lowers_mig_and_completeness_as_predicted(identity_scores):
    # MIG: factor a's two dimensions hold log 4 and log 2 of its log 8 nats: gap 1/3, the others 1
    predicted_mig = (3 + 1 / 3) / 4
    assert mig(split_code) == pytest.approx(predicted_mig, abs=0.02)
    # DCI completeness: factor a's importance is shared by two of the five dimensions (shares q, 1 - q
    # with q between 1/3 and 2/3): 1 - H(q) / log 5 for it, 1 for the other three
    low, high = [(3 + 1 - h / math.log(5)) / 4 for h in (math.log(2), -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)))]
    d = dci(split_code)
    assert low - 0.01 < d["dci_completeness"] < high + 0.01
    assert d["dci_completeness"] < identity_scores["dci_completeness"] - 0.05
    assert d["dci_disentanglement"] > 0.98  # each dimension still serves one factor


def test_dci_fitted_in_parallel_gives_the_same_answer():
    """Threads here, to spare the test two worker processes' start-up (tests/test_dsprites.py runs the
    default process pool through ``aevb evaluate --disentanglement-jobs 2``)."""
    from joblib import parallel_config

    gt = ground_truth(lambda rows: STD[rows] @ ROTATION + 0.3 * np.random.default_rng(len(rows)).normal(size=(len(rows), 4)))
    args = (*codes_and_factors(gt, 100, 1), *codes_and_factors(gt, 50, 2))
    with parallel_config(backend="threading"):
        parallel = dis.dci_from_codes(*args, n_jobs=2)
    assert parallel == dis.dci_from_codes(*args)


def test_estimators_closed_forms():
    a = np.array([0, 0, 1, 1] * 25)
    assert dis.mutual_info(a, a) == pytest.approx(math.log(2))
    assert dis.mutual_info(a, np.array([0, 1] * 50)) == pytest.approx(0.0)  # independent
    assert dis.dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dis.dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)
    # 20 equal-width bins over the range: the 20 evenly spaced values land in 20 different bins
    assert dis.discretize(np.arange(20.0)[:, None])[:, 0].tolist() == list(range(20))


def test_ground_truth_leaves_out_constant_factors_and_draws_rows_sharing_a_class():
    factors = np.concatenate([np.zeros((len(F), 1), np.int64), F], 1)  # a constant first factor (as dSprites' colour)
    gt = dis.GroundTruth(factors, identity, ("colour", *NAMES))
    assert gt.names == NAMES and gt.num_factors == 4
    classes = np.random.default_rng(0).integers(0, 3, size=(50, 7))
    rows = gt.rows_sharing(2, classes, np.random.default_rng(1))
    assert (gt.factors[rows, 2] == classes).all()
    with pytest.raises(ValueError, match="unknown sample sizes"):
        dis.disentanglement_scores(gt, sizes={"dci_points": 5})
