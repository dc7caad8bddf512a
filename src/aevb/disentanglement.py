"""Disentanglement metrics on a data set with ground-truth factors, with the protocol of Locatello et al. (2019).

    aevb evaluate runs/dsprites --disentanglement

The five scores (docs/disentanglement.md has the protocol and the references):

- ``beta_vae_score`` (Higgins et al. 2017): accuracy of a logistic regression that tells, from the
  mean absolute difference of the codes of ``batch_size`` pairs of images sharing one factor's
  value, which factor was shared.
- ``factor_vae_score`` (Kim & Mnih 2018): accuracy of a majority-vote classifier that tells the
  fixed factor of a batch from the code dimension of least variance (each divided by its
  variance over the data; dimensions whose standard deviation is under 0.05 left out).
- ``mig`` (Chen et al. 2018): for each factor, the gap between the two largest mutual informations
  of a code dimension (discretised into 20 equal-width bins) with it, over its entropy; averaged.
- ``sap`` (Kumar et al. 2018): for each factor, the gap between the two best accuracies of a linear
  SVM (C = 0.01, balanced classes) predicting it from one code dimension; averaged.
- ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness`` (Eastwood & Williams 2018):
  from the feature importances of one gradient-boosted-trees classifier per factor; the
  informativeness is their mean test accuracy.

Every factor is discrete (its classes 0 .. n-1); a factor with a single value is left out.
Images are drawn from the whole data set (every split), uniformly: on a full factor grid such
as dSprites that is drawing the factors uniformly, as Locatello et al. do; "images sharing a
factor's value" are drawn uniformly among those that have it. The codes are the posterior
means (``model.embed``). Each metric draws from its own generator, ``numpy.random.default_rng
((seed, i))``, so its value depends only on the seed and its own sample sizes.

The metrics take a ``GroundTruth`` (the factors of every image, and a function from image rows
to their codes): ``GroundTruth.of_model`` for a trained model on a ``Dataset``, or any
function for known codes (the tests pin the metrics on synthetic codes this way).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Locatello et al. (2019), disentanglement_lib's unsupervised_study_v1 metric settings.
LOCATELLO_SIZES: dict[str, int] = {
    "beta_vae_batch": 64, "beta_vae_train": 10000, "beta_vae_eval": 5000,
    "factor_vae_batch": 64, "factor_vae_train": 10000, "factor_vae_eval": 5000, "factor_vae_variance": 10000,
    "mig_points": 10000,
    "sap_train": 10000, "sap_test": 5000,
    "dci_train": 10000, "dci_test": 5000,
}
MIG_BINS = 20
FACTOR_VAE_MIN_STD = 0.05
SAP_C = 0.01
SCORE_KEYS = ("beta_vae_score", "factor_vae_score", "mig", "sap", "dci_disentanglement", "dci_completeness",
              "dci_informativeness")


@dataclass
class GroundTruth:
    """The images a metric may draw: ``factors`` (N, K) int64 classes of every image, ``names`` (K,),
    and ``codes(rows)``, the (len(rows), D) float64 codes of the images at those rows."""

    factors: np.ndarray
    codes: Callable[[np.ndarray], np.ndarray]
    names: tuple[str, ...]
    _groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        f = np.asarray(self.factors, dtype=np.int64)
        varying = [k for k in range(f.shape[1]) if len(np.unique(f[:, k])) > 1]
        if not varying:
            raise ValueError("the ground-truth factors are all constant: no metric can be computed")
        self.factors = f[:, varying]
        self.names = tuple(self.names[k] for k in varying)
        # Per factor: the rows sorted by its class, where each class starts, and how many rows it has.
        for k in range(self.factors.shape[1]):
            order = np.argsort(self.factors[:, k], kind="stable")
            counts = np.bincount(self.factors[:, k])
            self._groups.append((order, np.concatenate([[0], np.cumsum(counts)[:-1]]), counts))

    @property
    def num_factors(self) -> int:
        return self.factors.shape[1]

    def sample_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows drawn uniformly (with replacement)."""
        return rng.integers(0, len(self.factors), size=n)

    def rows_sharing(self, k: int, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each entry of ``classes`` (any shape), a row drawn uniformly among those whose factor k has that class."""
        order, start, counts = self._groups[k]
        pick = np.floor(rng.random(classes.shape) * counts[classes]).astype(np.int64)
        return order[start[classes] + pick]

    @classmethod
    def of_model(cls, model, dataset, batch_size: int = 1000) -> "GroundTruth":
        """Every image of ``dataset`` (all splits together) with its factors, coded by ``model``'s posterior
        means (``model.embed``); each image is encoded once, the first time a metric draws it."""
        import torch

        from .data.dataset import PackedSplit, Split

        parts = [s for s in (dataset.train, dataset.valid, dataset.test) if s is not None]
        if dataset.factors is None or any(s.factors is None for s in parts):
            raise ValueError(f"data set {dataset.name} has no ground-truth factors")
        factors = torch.cat([s.factors.cpu() for s in parts]).numpy()
        if all(isinstance(s, PackedSplit) for s in parts):
            pool: Any = PackedSplit(torch.cat([s.bits.cpu() for s in parts]), parts[0].image_shape)
        else:
            pool = Split(torch.cat([s.x.cpu() for s in parts]))
        device = model.device
        table = np.zeros((len(factors), model.latent_dim))  # each image's code, encoded once when first drawn
        known = np.zeros(len(factors), bool)

        @torch.no_grad()
        def codes(rows: np.ndarray) -> np.ndarray:
            new = np.unique(rows[~known[rows]])
            for start in range(0, len(new), batch_size):
                idx = new[start : start + batch_size]
                x = pool.images(torch.from_numpy(idx)).to(device)
                table[idx] = model.embed(x, None).double().cpu().numpy()
            known[new] = True
            return table[rows]

        return cls(factors, codes, tuple(dataset.factors.names))


def _codes_and_factors(gt: GroundTruth, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = gt.sample_rows(n, rng)
    return gt.codes(rows), gt.factors[rows]


# --- estimators on codes -------------------------------------------------------------------


def discretize(codes: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Each column of ``codes`` (n, D) as bin indices 0 .. bins-1 of ``bins`` equal-width bins over its range."""
    out = np.zeros(codes.shape, np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins)
        out[:, d] = np.digitize(codes[:, d], edges[1:-1])
    return out


def mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """The mutual information (nats) of two discrete samples (non-negative integers), from their joint histogram."""
    nb = int(b.max()) + 1
    joint = np.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).reshape(-1, nb) / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    on = joint > 0
    return float((joint[on] * np.log(joint[on] / (pa @ pb)[on])).sum())


def mutual_info_matrix(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """(D, K) mutual information (nats) between each discretised code dimension and each factor."""
    z = discretize(codes, bins)
    return np.array([[mutual_info(z[:, d], factors[:, k]) for k in range(factors.shape[1])]
                     for d in range(z.shape[1])])


def mig_from_codes(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> dict[str, Any]:
    """MIG of codes (n, D) against factors (n, K): ``mig``, ``mig_per_factor``, ``mutual_info`` (D, K), ``entropy`` (K,)."""
    m = mutual_info_matrix(codes, factors, bins)
    entropy = np.array([mutual_info(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(m.shape[1])
    gaps = (top[0] - second) / entropy
    return {"mig": float(gaps.mean()), "mig_per_factor": gaps.tolist(), "mutual_info": m.tolist(),
            "entropy": entropy.tolist()}


def sap_from_codes(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
                   seed: int = 0) -> dict[str, Any]:
    """SAP with discrete factors: ``sap`` and the (D, K) ``sap_accuracy`` of one linear SVM per dimension and factor."""
    from sklearn.svm import LinearSVC

    score = np.zeros((codes.shape[1], factors.shape[1]))
    for d in range(codes.shape[1]):
        for k in range(factors.shape[1]):
            svm = LinearSVC(C=SAP_C, class_weight="balanced", random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on a dimension that carries nothing
                svm.fit(codes[:, d : d + 1], factors[:, k])
            score[d, k] = np.mean(svm.predict(codes_test[:, d : d + 1]) == factors_test[:, k])
    top = np.sort(score, axis=0)
    second = top[-2] if len(top) > 1 else np.zeros(score.shape[1])
    return {"sap": float((top[-1] - second).mean()), "sap_accuracy": score.tolist()}


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H(p_i) / log(base) for each row of p (rows normalised; an all-zero row counts as uniform)."""
    p = p + 1e-11
    p = p / p.sum(1, keepdims=True)
    return 1.0 - (-(p * np.log(p)).sum(1)) / math.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """DCI disentanglement and completeness of a (D, K) importance matrix (D codes, K factors)."""
    d, k = importance.shape
    total = importance.sum()
    weights = importance if total > 0 else np.ones_like(importance)
    disentanglement = float((_one_minus_entropy(importance, k) * weights.sum(1) / weights.sum()).sum()) if k > 1 else 1.0
    completeness = float((_one_minus_entropy(importance.T, d) * weights.sum(0) / weights.sum()).sum()) if d > 1 else 1.0
    return disentanglement, completeness


def _fit_gbt(codes: np.ndarray, labels: np.ndarray, codes_test: np.ndarray, labels_test: np.ndarray,
             seed: int) -> tuple[np.ndarray, float]:
    """One factor's classifier of DCI: its (D,) absolute feature importances and its test accuracy."""
    from sklearn.ensemble import GradientBoostingClassifier

    gbt = GradientBoostingClassifier(random_state=seed).fit(codes, labels)
    return np.abs(gbt.feature_importances_), float(np.mean(gbt.predict(codes_test) == labels_test))


def dci_from_codes(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
                   seed: int = 0, n_jobs: int = 1) -> dict[str, Any]:
    """DCI with one gradient-boosted-trees classifier (scikit-learn's defaults) per factor. The classifiers
    are independent, so ``n_jobs`` processes fit them side by side (joblib) with the same answer."""
    from joblib import Parallel, delayed

    fits = Parallel(n_jobs=n_jobs)(delayed(_fit_gbt)(codes, factors[:, k], codes_test, factors_test[:, k], seed)
                                   for k in range(factors.shape[1]))
    importance = np.stack([imp for imp, _ in fits], axis=1)  # (D, K)
    disentanglement, completeness = dci_from_importance(importance)
    return {"dci_disentanglement": disentanglement, "dci_completeness": completeness,
            "dci_informativeness": float(np.mean([acc for _, acc in fits])), "dci_importance": importance.tolist()}


# --- metrics that draw their own batches ----------------------------------------------------


def _beta_vae_features(gt: GroundTruth, n: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training points: the mean |z_a - z_b| over ``batch`` pairs sharing the class of a random factor."""
    k = rng.integers(0, gt.num_factors, size=n)
    a = gt.sample_rows(n * batch, rng).reshape(n, batch)
    b = np.empty_like(a)
    for j in range(gt.num_factors):
        on = k == j
        b[on] = gt.rows_sharing(j, gt.factors[a[on], j], rng)
    za, zb = gt.codes(a.ravel()), gt.codes(b.ravel())
    return np.abs(za - zb).reshape(n, batch, -1).mean(1), k


def beta_vae_score(gt: GroundTruth, rng: np.random.Generator, batch: int = 64, n_train: int = 10000,
                   n_eval: int = 5000) -> dict[str, float]:
    """The beta-VAE score (eval accuracy) and the classifier's train accuracy."""
    from sklearn.linear_model import LogisticRegression

    x, y = _beta_vae_features(gt, n_train, batch, rng)
    clf = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    x_eval, y_eval = _beta_vae_features(gt, n_eval, batch, rng)
    return {"beta_vae_score": float(clf.score(x_eval, y_eval)), "beta_vae_train_accuracy": float(clf.score(x, y))}


def _factor_vae_votes(gt: GroundTruth, n: int, batch: int, variances: np.ndarray, active: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """(K, D) votes: how often fixing factor k left code dimension d with the least (normalised) variance."""
    k = rng.integers(0, gt.num_factors, size=n)
    first = gt.sample_rows(n, rng)
    rows = np.empty((n, batch), np.int64)
    for j in range(gt.num_factors):
        on = k == j
        classes = np.repeat(gt.factors[first[on], j][:, None], batch, axis=1)
        rows[on] = gt.rows_sharing(j, classes, rng)
    z = gt.codes(rows.ravel()).reshape(n, batch, -1)
    local = z.var(axis=1, ddof=1)[:, active] / variances[active]  # (n, active dims)
    dims = np.flatnonzero(active)[np.argmin(local, axis=1)]
    votes = np.zeros((gt.num_factors, len(variances)), np.int64)
    np.add.at(votes, (k, dims), 1)
    return votes


def factor_vae_score(gt: GroundTruth, rng: np.random.Generator, batch: int = 64, n_train: int = 10000,
                     n_eval: int = 5000, n_variance: int = 10000, min_std: float = FACTOR_VAE_MIN_STD) -> dict[str, Any]:
    """The FactorVAE score (eval accuracy of the majority vote), its train accuracy and the active dimensions."""
    variances = gt.codes(gt.sample_rows(n_variance, rng)).var(axis=0, ddof=1)
    active = np.sqrt(variances) >= min_std
    if not active.any():
        return {"factor_vae_score": 0.0, "factor_vae_train_accuracy": 0.0, "factor_vae_active_dims": 0}
    train = _factor_vae_votes(gt, n_train, batch, variances, active, rng)
    vote = np.argmax(train, axis=0)  # each dimension's factor
    cols = np.arange(train.shape[1])
    evals = _factor_vae_votes(gt, n_eval, batch, variances, active, rng)
    return {"factor_vae_score": float(evals[vote, cols].sum() / evals.sum()),
            "factor_vae_train_accuracy": float(train[vote, cols].sum() / train.sum()),
            "factor_vae_active_dims": int(active.sum())}


# --- all of them ------------------------------------------------------------------------


def disentanglement_scores(gt: GroundTruth, seed: int = 0, sizes: dict[str, int] | None = None,
                           progress: Callable[[str], None] | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """The five metrics (``SCORE_KEYS``) and their details, with Locatello et al.'s sample sizes
    (``LOCATELLO_SIZES``; ``sizes`` overrides some). Each metric draws from ``default_rng((seed, i))``;
    ``n_jobs`` processes fit DCI's classifiers (one per factor) side by side, with the same answer."""
    n = {**LOCATELLO_SIZES, **(sizes or {})}
    unknown = set(n) - set(LOCATELLO_SIZES)
    if unknown:
        raise ValueError(f"unknown sample sizes {sorted(unknown)}; choose among {sorted(LOCATELLO_SIZES)}")
    say = progress or (lambda _: None)
    rng = lambda i: np.random.default_rng((seed, i))  # noqa: E731
    out: dict[str, Any] = {}
    say("beta-VAE score")
    out.update(beta_vae_score(gt, rng(0), n["beta_vae_batch"], n["beta_vae_train"], n["beta_vae_eval"]))
    say("FactorVAE score")
    out.update(factor_vae_score(gt, rng(1), n["factor_vae_batch"], n["factor_vae_train"], n["factor_vae_eval"],
                                n["factor_vae_variance"]))
    say("MIG")
    out.update(mig_from_codes(*_codes_and_factors(gt, n["mig_points"], rng(2))))
    say("SAP")
    g = rng(3)
    out.update(sap_from_codes(*_codes_and_factors(gt, n["sap_train"], g), *_codes_and_factors(gt, n["sap_test"], g)))
    say("DCI (gradient-boosted trees)")
    g = rng(4)
    out.update(dci_from_codes(*_codes_and_factors(gt, n["dci_train"], g), *_codes_and_factors(gt, n["dci_test"], g),
                              seed=seed, n_jobs=n_jobs))
    out["factor_names"] = list(gt.names)
    out["disentanglement_seed"] = seed
    out["disentanglement_sizes"] = n
    return out


def factor_of_each_dim(result: dict[str, Any]) -> list[tuple[str, float]]:
    """For each code dimension, the factor it shares the most information with (normalised by the
    factor's entropy, from MIG's mutual informations) and that share, in [0, 1]."""
    m = np.asarray(result["mutual_info"]) / np.asarray(result["entropy"])[None, :]
    names = result["factor_names"]
    return [(names[int(np.argmax(row))], float(row.max())) for row in m]


def evaluate_disentanglement(model, dataset, seed: int = 0, sizes: dict[str, int] | None = None,
                             progress: Callable[[str], None] | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """What ``aevb evaluate --disentanglement`` adds to evaluation.json: the seven scores (``SCORE_KEYS``)
    at the top level and the details under ``disentanglement`` (the mutual informations, importances and
    accuracies, each code dimension's factor, the seed and sample sizes)."""
    if getattr(dataset, "factors", None) is None:
        raise ValueError(f"data set {dataset.name} has no ground-truth factors; the disentanglement metrics need "
                         "a data set with factors (dsprites, dsprites_small, or npy: with a factors array)")
    result = disentanglement_scores(GroundTruth.of_model(model, dataset), seed=seed, sizes=sizes, progress=progress,
                                   n_jobs=n_jobs)
    details = {k: v for k, v in result.items() if k not in SCORE_KEYS}
    details["factor_of_dim"] = [{"factor": name, "share": share} for name, share in factor_of_each_dim(result)]
    return {**{k: result[k] for k in SCORE_KEYS}, "disentanglement": details}
