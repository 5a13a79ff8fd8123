"""The three demo models: an image classifier, a fraud scorer and a two-tower recommender.

Each `forward` is the served signature (what the exported ONNX graph computes); training
uses the raw-score method beside it (`logits`, `user_embedding`) for numerically stable
losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ImageClassifierConfig:
    in_channels: int = 3
    channels: tuple[int, int, int] = (8, 16, 32)
    n_classes: int = 2


class ImageClassifier(nn.Module):
    """Small CNN: three conv blocks, global average pooling, a linear head, softmax."""

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.channels
        self.features = nn.Sequential(
            _conv_block(config.in_channels, c1),
            _conv_block(c1, c2),
            _conv_block(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(c3, config.n_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


@dataclass(frozen=True)
class FraudScorerConfig:
    n_features: int = 16
    hidden: tuple[int, int] = (64, 32)


class FraudScorer(nn.Module):
    """MLP 16 → 64 → 32 → 1 with a sigmoid; standardises raw features itself.

    The feature mean and standard deviation live in buffers, so clients send the raw
    transaction and the exported graph carries its own preprocessing.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: FraudScorerConfig) -> None:
        super().__init__()
        h1, h2 = config.hidden
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        self.mlp = nn.Sequential(
            nn.Linear(config.n_features, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, 1),
        )

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        # A constant feature would divide by zero; leave it unscaled instead.
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def logits(self, transactions: torch.Tensor) -> torch.Tensor:
        return self.mlp((transactions - self.feature_mean) / self.feature_std)

    def forward(self, transactions: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(transactions))


@dataclass(frozen=True)
class TwoTowerConfig:
    n_user_features: int = 16
    n_items: int = 1000
    embedding_dim: int = 32
    hidden: int = 64
    top_k: int = 10


class TwoTowerRecommender(nn.Module):
    """User tower (MLP over user features) against an item embedding table.

    Scores are dot products between the user embedding and every item embedding plus a
    per-item bias (popularity). `forward` returns the top-k item ids and their scores, so
    the ranking happens inside the served graph and a client gets ids, not 1000 scores.
    """

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.user_tower = nn.Sequential(
            nn.Linear(config.n_user_features, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.embedding_dim),
        )
        self.item_embeddings = nn.Embedding(config.n_items, config.embedding_dim)
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        nn.init.normal_(self.item_embeddings.weight, std=0.1)

    def item_scores(self, user_features: torch.Tensor) -> torch.Tensor:
        """Scores of every item for every user: [batch, n_items]."""
        return self.user_tower(user_features) @ self.item_embeddings.weight.T + self.item_bias

    def forward(self, user_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, item_ids = torch.topk(self.item_scores(user_features), self.top_k, dim=1)
        return item_ids, scores


class PopularityRanker(nn.Module):
    """The recommender's fallback: the same top-k items for every user, ranked by how many
    training users interacted with each (its scores). No user tower, so it answers in
    microseconds and cannot fail the way a learned model can."""

    item_ids: torch.Tensor
    scores: torch.Tensor

    def __init__(self, popularity: torch.Tensor, top_k: int) -> None:
        super().__init__()
        scores, item_ids = torch.topk(popularity, top_k)
        self.register_buffer("item_ids", item_ids)
        self.register_buffer("scores", scores.float())

    def forward(self, user_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [batch, 1] zeros broadcast the ranking to one row per user.
        base = torch.zeros_like(user_features[:, :1])
        return base.long() + self.item_ids, base + self.scores
