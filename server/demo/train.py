"""Training and evaluation of the demo models (needs torch); build.py compiles them.

Kept apart from `build.py` so that finding an already-built demo repository never imports
torch: the server starts in a fraction of a second, and torch stays an optional extra.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data
from .models import (
    FraudScorer,
    FraudScorerConfig,
    ImageClassifier,
    ImageClassifierConfig,
    PopularityRanker,
    TwoTowerConfig,
    TwoTowerRecommender,
)

Report = Callable[[float], None]  # fraction of the current model's training, 0..1
GOLDEN_ROWS = 8


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float


@dataclass
class TrainedModel:
    """A trained model in eval mode, its held-out metrics and 8 golden input rows."""

    module: nn.Module
    golden_inputs: np.ndarray
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    # Training rows the version's drift reference describes (None: no reference).
    reference_inputs: np.ndarray | None = None
    # Share of training users who interacted with each item (the recommender only).
    popularity: np.ndarray | None = None

    def golden_outputs(self) -> list[np.ndarray]:
        """Outputs computed by PyTorch, the reference every exported format is checked against."""
        with torch.no_grad():
            result = self.module(torch.from_numpy(self.golden_inputs))
        outputs = result if isinstance(result, tuple) else (result,)
        return [tensor.numpy() for tensor in outputs]


# --- image classifier -----------------------------------------------------------------------


# Training rows kept for a drift reference: quantiles of 20,000 rows are stable to about
# a percentile, and binning them takes a fraction of a second.
REFERENCE_ROWS = 20000


def train_image_classifier(report: Report, seed: int = 1) -> TrainedModel:
    train, test = data.make_images(3000, seed), data.make_images(1000, seed + 1000)
    schedule = Schedule(epochs=6, batch_size=64, lr=5e-3)
    with _seeded(seed):
        model = ImageClassifier(ImageClassifierConfig())

        def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(model.logits(images), labels)

        _fit(model, loss, train, schedule, report)
    accuracy = float((_predict(model, test.x).argmax(axis=1) == test.y).mean())
    details = {"train_rows": len(train.y), "test_rows": len(test.y), **asdict(schedule)}
    return TrainedModel(model, test.x[:GOLDEN_ROWS], {"accuracy": accuracy}, details)


# --- fraud scorer ---------------------------------------------------------------------------


def train_fraud_scorer(report: Report, seed: int = 2) -> TrainedModel:
    train, test = data.make_transactions(60000, seed), data.make_transactions(10000, seed + 1000)
    schedule = Schedule(epochs=12, batch_size=512, lr=1e-2)
    with _seeded(seed):
        model = FraudScorer(FraudScorerConfig(n_features=train.x.shape[1]))
        features = torch.from_numpy(train.x)
        model.set_standardisation(features.mean(dim=0), features.std(dim=0))

        def loss(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = model.logits(rows).squeeze(1)
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())

        _fit(model, loss, train, schedule, report)
    scores = _predict(model, test.x)[:, 0]
    metrics = {"auc": roc_auc(scores, test.y), "positive_rate": float(test.y.mean())}
    details = {
        "train_rows": len(train.y),
        "test_rows": len(test.y),
        **asdict(schedule),
        "features": list(data.TRANSACTION_FEATURES),
    }
    # Golden rows mix frauds and non-frauds so the check covers both ends of the sigmoid.
    rows = np.concatenate([np.flatnonzero(test.y == 1)[:3], np.flatnonzero(test.y == 0)[:5]])
    reference = train.x[:REFERENCE_ROWS]
    return TrainedModel(model, test.x[rows], metrics, details, reference_inputs=reference)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum identity (ties broken by order)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    rank_sum = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(rank_sum / (positives * negatives))


# --- recommender ----------------------------------------------------------------------------


def train_recommender(report: Report, seed: int = 3) -> TrainedModel:
    config = TwoTowerConfig()
    interactions = data.make_interactions(3500, config.n_items, config.n_user_features, seed)
    n_train = 3000
    # Test users are new: the model sees only their features, as at serving time.
    targets = _multi_hot(interactions.positives[:n_train], config.n_items)
    train = data.Split(interactions.user_features[:n_train], targets)
    schedule = Schedule(epochs=30, batch_size=128, lr=5e-3)
    with _seeded(seed):
        model = TwoTowerRecommender(config)

        def loss(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return _softmax_loss(model.item_scores(users), items)

        _fit(model, loss, train, schedule, report)
    test_features = interactions.user_features[n_train:]
    test_positives = interactions.positives[n_train:]
    item_ids, scores = _predict_top_k(model, test_features)
    popular = np.argsort(-targets.sum(axis=0), kind="stable")[: config.top_k]
    metrics = {
        "recall_at_10": recall_at_k(item_ids, test_positives),
        "popularity_recall_at_10": recall_at_k(
            np.tile(popular, (len(test_positives), 1)), test_positives
        ),
        "random_recall_at_10": config.top_k / config.n_items,
    }
    details = {
        "train_users": n_train,
        "test_users": len(test_positives),
        "items": config.n_items,
        "positives_per_user": len(test_positives[0]),
        **asdict(schedule),
    }
    golden = test_features[_stable_ranking_rows(scores, config.top_k)]
    popularity = targets.mean(axis=0).astype(np.float32)
    return TrainedModel(model, golden, metrics, details, popularity=popularity)


def popularity_ranker(recommender: TrainedModel, report: Report) -> TrainedModel:
    """The recommender's fallback, from the interactions it was trained on."""
    assert recommender.popularity is not None
    top_k = TwoTowerConfig().top_k
    module = PopularityRanker(torch.from_numpy(recommender.popularity), top_k).eval()
    report(1.0)
    metrics = {"recall_at_10": recommender.metrics["popularity_recall_at_10"]}
    details = {"items": len(recommender.popularity), "top_k": top_k, "fallback_for": "recommender"}
    return TrainedModel(module, recommender.golden_inputs, metrics, details)


def recall_at_k(item_ids: np.ndarray, positives: list[np.ndarray]) -> float:
    """Mean over users of |top-k ∩ held-out items| / |held-out items|."""
    hits = [
        np.isin(row, pos).sum() / len(pos) for row, pos in zip(item_ids, positives, strict=True)
    ]
    return float(np.mean(hits))


def _softmax_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Full softmax over 1000 items is cheap, and unlike sampled negatives it is exact.
    log_probs = torch.log_softmax(scores, dim=1)
    return -(log_probs * targets).sum(dim=1).div(targets.sum(dim=1)).mean()


def _multi_hot(positives: list[np.ndarray], n_items: int) -> np.ndarray:
    targets = np.zeros((len(positives), n_items), dtype=np.float32)
    for row, items in enumerate(positives):
        targets[row, items] = 1.0
    return targets


def _predict_top_k(model: nn.Module, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        item_ids, scores = model(torch.from_numpy(features))
    return item_ids.numpy(), scores.numpy()


def _stable_ranking_rows(top_scores: np.ndarray, k: int, margin: float = 1e-2) -> np.ndarray:
    # Golden item ids are compared exactly; rows whose ranking hinges on a near-tie could
    # flip under a numerically correct backend, so keep rows whose consecutive scores differ
    # by far more than the golden tolerance. (The k-th/k+1-th gap is not visible here; a
    # near-tie there changes at most the last id, and the margin makes it unlikely.)
    gaps = np.diff(top_scores[:, :k], axis=1)
    stable = np.flatnonzero(np.abs(gaps).min(axis=1) > margin)
    if len(stable) < GOLDEN_ROWS:
        stable = np.argsort(-np.abs(gaps).min(axis=1))
    return stable[:GOLDEN_ROWS]


# --- shared training helpers ----------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Seeds initialisation and shuffling without disturbing the caller's global RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _fit(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    split: data.Split,
    schedule: Schedule,
    report: Report,
) -> None:
    """Adam with a one-cycle schedule: reaches good accuracy in few epochs, which keeps
    the whole demo build to seconds on two cores."""
    steps = schedule.epochs * math.ceil(len(split.x) / schedule.batch_size)
    optimiser = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=schedule.lr, total_steps=steps
    )
    model.train()
    for epoch in range(schedule.epochs):
        for x, y in _batches(split, schedule.batch_size):
            optimiser.zero_grad()
            loss(x, y).backward()
            optimiser.step()
            one_cycle.step()
        report((epoch + 1) / schedule.epochs)
    model.eval()


def _batches(split: data.Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # Draws from torch's global generator, which the caller seeded with _seeded().
    order = torch.randperm(len(split.x))
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()
