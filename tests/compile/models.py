"""Tiny models for the compile tests: an MLP, a small CNN, and one the exporter rejects."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 3)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.features(image).flatten(1))
        return logits, logits.argmax(dim=1)


class DataDependent(nn.Module):
    """Branches on a tensor's value: torch.export cannot trace both paths."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return SmallCNN()


def data_dependent() -> nn.Module:
    torch.manual_seed(2)
    return DataDependent()


def not_a_module() -> object:
    return "weights.bin"


def sequential_mlp() -> nn.Module:
    """An nn.Sequential of Linear layers and supported activations: lowers to the kernels."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4), nn.Sigmoid()
    )


def tanh_mlp() -> nn.Module:
    """A Sequential with Tanh, which the kernels have no epilogue for."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))


class Scoring(nn.Module):
    """A recommender's scoring step in the shape compile's kernels variant lowers: a user
    tower, item embeddings, a per-item bias and k; forward gives (item_ids, scores)."""

    def __init__(self, n_items: int = 300, top_k: int = 5) -> None:
        super().__init__()
        self.top_k = top_k
        self.user_tower = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
        self.item_embeddings = nn.Embedding(n_items, 8)
        self.item_bias = nn.Parameter(torch.randn(n_items) * 0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.user_tower(x) @ self.item_embeddings.weight.T + self.item_bias
        best = torch.topk(scores, self.top_k, dim=1)
        return best.indices, best.values


def scoring() -> nn.Module:
    torch.manual_seed(5)
    return Scoring()


class Standardised(nn.Module):
    """Raw features standardised by buffers, an MLP, then a sigmoid in forward (the demo
    fraud scorer's shape): not a Sequential, lowers to the kernels from its graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-2.0, 3.0, 16))
        self.register_buffer("std", torch.linspace(0.5, 4.0, 16))
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp((x - self.mean) / self.std))


def standardised_mlp() -> nn.Module:
    torch.manual_seed(6)
    return Standardised()
