"""Multinomial logistic regression fitted by minibatch Adam: the label audit's probe on large
data sets, whose cost per image does not grow with the number of images.

L-BFGS (scikit-learn's ``LogisticRegression``) needs more iterations as the training folds grow
past the feature dimension, and each iteration is a full pass over an array that no longer fits
in the cache, so the audit's per-image cost rose 4x from 1,000 to 50,000 images. Here the work
is fixed in advance: ``epochs`` passes in batches of ``batch_size`` images, Adam with a cosine
schedule from ``lr`` down to zero, on float32 CPU tensors. The objective is the one the L-BFGS
probe minimises: mean cross-entropy plus ``l2 / 2 x ||W||^2`` (no penalty on the bias), i.e.
scikit-learn's ``C = 1 / (l2 x training images)``; the fixed budget stops before L-BFGS's
optimum (with batches of 512 on 10,000 synthetic images, out-of-fold probabilities 0.016
apart on average, flagged sets with Jaccard 0.90: docs/measurements.md; the audit picks the
batch size, ``cytotune.analysis.audit.minibatch_batch``). Seeded (initial weights are zero; the batch
order comes from ``seed``), and it uses the threads torch is set to (``torch.set_num_threads``).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


class MinibatchLogisticRegression(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier (``fit``, ``predict_proba``, ``classes_``), so that
    ``cross_val_predict`` and pipelines handle it like ``LogisticRegression``."""

    def __init__(self, l2: float = 1e-3, epochs: int = 20, batch_size: int = 256,
                 lr: float = 0.01, seed: int = 0) -> None:
        self.l2 = l2
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MinibatchLogisticRegression":
        """Fit on features ``x`` (n, d) and labels ``y`` (n,): exactly ``epochs`` passes."""
        import torch

        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.l2 < 0:
            raise ValueError(f"epochs, batch_size and lr must be positive and l2 >= 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.lr}, {self.l2}")
        x = np.asarray(x)
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("a classifier needs at least 2 classes")
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(codes.astype(np.int64))
        n, d = xt.shape
        weight = torch.zeros(d, len(self.classes_), requires_grad=True)
        bias = torch.zeros(len(self.classes_), requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=self.lr)
        per_epoch = math.ceil(n / self.batch_size)
        total = self.epochs * per_epoch
        rng = np.random.default_rng(self.seed)
        step = 0
        for _ in range(self.epochs):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, self.batch_size):
                rows = order[start:start + self.batch_size]
                for group in opt.param_groups:  # cosine from lr to 0 over the whole run
                    group["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * step / total))
                logits = xt[rows] @ weight + bias
                loss = (torch.nn.functional.cross_entropy(logits, yt[rows])
                        + 0.5 * self.l2 * weight.pow(2).sum())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        self.coef_ = weight.detach().numpy().T.copy()  # (classes, d), as scikit-learn's
        self.intercept_ = bias.detach().numpy().copy()
        self.n_iter_ = np.array([total])
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Class scores (n, classes), float64."""
        check_is_fitted(self, "coef_")
        return np.asarray(x, dtype=np.float64) @ self.coef_.T.astype(np.float64) + self.intercept_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the class scores (n, classes)."""
        from scipy.special import softmax

        return softmax(self.decision_function(x), axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[self.decision_function(x).argmax(axis=1)]
