"""Synthetic, seeded data sets for the three demo models.

Each generator is a pure function of its arguments, so a rebuild of the demo repository
trains on identical data and writes identical golden files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SHAPE = (3, 32, 32)
TRANSACTION_FEATURES = (
    "log_amount",
    "hour_sin",
    "hour_cos",
    "merchant_risk",
    "log_distance_km",
    "velocity_1h",
    "account_age_years",
    "card_present",
    "foreign",
    "online",
    "amount_vs_avg",
    "new_device",
    "failed_pin_24h",
    "is_weekend",
    "customer_age_decades",
    "chargebacks_1y",
)


@dataclass(frozen=True)
class Split:
    """Features and targets of one split; `y` is a class id, a 0/1 label or an item list."""

    x: np.ndarray
    y: np.ndarray


# --- images: "cats" vs "dogs" ---------------------------------------------------------------


def make_images(n: int, seed: int) -> Split:
    """Two classes of 3x32x32 images told apart by the orientation of a striped patch.

    Class 0 ("cat") has near-horizontal stripes, class 1 ("dog") near-vertical ones. The patch
    sits at a random place with random frequency, phase, contrast and colour, on top of a
    random colour blob and pixel noise. Stripes are zero-mean, so the mean pixel (or any
    colour statistic) carries no label information: a model has to see the texture.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    yy, xx = np.mgrid[0 : IMAGE_SHAPE[1], 0 : IMAGE_SHAPE[2]].astype(np.float64)
    images = rng.normal(0.0, NOISE, size=(n, *IMAGE_SHAPE))
    images += _colour_blobs(rng, n, yy, xx)
    images += _striped_patches(rng, labels, yy, xx)
    return Split(images.astype(np.float32), labels.astype(np.int64))


NOISE = 0.5


def _striped_patches(
    rng: np.random.Generator, labels: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    n = len(labels)
    angle = _col(np.where(labels == 0, 0.0, np.pi / 2) + rng.normal(0.0, 0.3, size=n))
    frequency = _col(rng.uniform(0.12, 0.3, size=n))
    phase = _col(rng.uniform(0.0, 2 * np.pi, size=n))
    stripes = np.sin(2 * np.pi * frequency * (xx * np.sin(angle) + yy * np.cos(angle)) + phase)
    window = _gaussian_window(rng, n, yy, xx, radius=(4.0, 7.0))
    contrast = _col(rng.uniform(0.4, 0.9, size=n))
    colour = rng.uniform(0.3, 1.0, size=(n, 3, 1, 1))
    return colour * (contrast * stripes * window)[:, None]


def _colour_blobs(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    # A distractor shared by both classes, so colour and brightness are not shortcuts.
    window = _gaussian_window(rng, n, yy, xx, radius=(3.0, 9.0), margin=0.0)
    return rng.normal(0.0, 0.8, size=(n, 3, 1, 1)) * window[:, None]


def _gaussian_window(
    rng: np.random.Generator,
    n: int,
    yy: np.ndarray,
    xx: np.ndarray,
    radius: tuple[float, float],
    margin: float = 8.0,
) -> np.ndarray:
    cy, cx = (_col(rng.uniform(margin, yy.shape[0] - margin, size=n)) for _ in range(2))
    sigma = _col(rng.uniform(*radius, size=n))
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _col(values: np.ndarray) -> np.ndarray:
    # Per-image scalars shaped to broadcast against a [height, width] grid.
    return values[:, None, None]


# --- transactions: fraud --------------------------------------------------------------------


def make_transactions(n: int, seed: int) -> Split:
    """Card transactions with 16 raw (unscaled) features and a ~5 % fraud label.

    Fraud follows interactions no single feature shows: a large amount on a young account,
    far from home with the card absent, bursts of transactions at night, a risky merchant
    abroad. Labels are drawn from the resulting probability, so they carry noise.
    """
    rng = np.random.default_rng(seed)
    f = _raw_transaction_features(rng, n)
    night = np.cos(2 * np.pi * (f["hour"] - 3) / 24) > 0.5
    logit = (
        -4.7
        + 4.0 * ((f["amount_vs_avg"] > 2.5) & (f["account_age_years"] < 1.5))
        + 4.0 * ((f["log_distance_km"] > 4.5) & (f["card_present"] == 0))
        + 2.5 * (f["velocity_1h"] >= 4) * (1.0 + night)
        + 8.0 * f["merchant_risk"] * f["foreign"]
        + 3.0 * f["new_device"] * f["online"]
        + 1.0 * f["failed_pin_24h"]
        + 1.0 * f["chargebacks_1y"]
        - 0.3 * np.abs(f["customer_age_decades"] - 4.5)
    )
    labels = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    hour = f.pop("hour")
    f["hour_sin"] = np.sin(2 * np.pi * hour / 24)
    f["hour_cos"] = np.cos(2 * np.pi * hour / 24)
    x = np.stack([f[name] for name in TRANSACTION_FEATURES], axis=1)
    return Split(x.astype(np.float32), labels.astype(np.int64))


def _raw_transaction_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    amount = rng.lognormal(3.5, 1.1, size=n)
    usual_amount = amount / rng.lognormal(0.0, 0.7, size=n)
    return {
        "log_amount": np.log1p(amount),
        "hour": rng.integers(0, 24, size=n).astype(np.float64),
        "merchant_risk": rng.beta(1.5, 6.0, size=n),
        "log_distance_km": np.log1p(rng.exponential(15.0, size=n) * rng.lognormal(0, 1.5, n)),
        "velocity_1h": rng.poisson(1.0, size=n).astype(np.float64),
        "account_age_years": rng.exponential(4.0, size=n),
        "card_present": (rng.random(n) < 0.6).astype(np.float64),
        "foreign": (rng.random(n) < 0.1).astype(np.float64),
        "online": (rng.random(n) < 0.4).astype(np.float64),
        "amount_vs_avg": amount / usual_amount,
        "new_device": (rng.random(n) < 0.08).astype(np.float64),
        "failed_pin_24h": rng.poisson(0.15, size=n).astype(np.float64),
        "is_weekend": (rng.random(n) < 2 / 7).astype(np.float64),
        "customer_age_decades": rng.uniform(1.8, 8.5, size=n),
        "chargebacks_1y": rng.poisson(0.1, size=n).astype(np.float64),
    }


# --- recommender: users, items, interactions ------------------------------------------------


@dataclass(frozen=True)
class RecommenderData:
    """User features per user, and the items each user interacted with (`positives[u]`)."""

    user_features: np.ndarray  # [n_users, n_features] float32
    positives: list[np.ndarray]  # per user: distinct item ids, int64
    n_items: int


def make_interactions(
    n_users: int,
    n_items: int,
    n_features: int,
    seed: int,
    latent_dim: int = 8,
    per_user: int = 20,
) -> RecommenderData:
    """Users and items with latent taste vectors; each user picks items by affinity.

    The model never sees the latent vectors: user features are a noisy linear view of them
    (like demographics and history aggregates), so a user tower has to recover taste from
    features, which is what lets the demo serve users it never trained on.
    """
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, latent_dim))
    items = rng.normal(size=(n_items, latent_dim))
    popularity = rng.normal(0.0, 0.7, size=n_items)
    projection = rng.normal(size=(latent_dim, n_features)) / np.sqrt(latent_dim)
    features = users @ projection + rng.normal(0.0, 0.3, size=(n_users, n_features))
    affinity = 1.5 * users @ items.T / np.sqrt(latent_dim) + popularity
    positives = [_sample_items(rng, row, per_user) for row in affinity]
    return RecommenderData(features.astype(np.float32), positives, n_items)


def _sample_items(rng: np.random.Generator, affinity: np.ndarray, count: int) -> np.ndarray:
    # Gumbel top-k draws `count` distinct items with probability proportional to exp(affinity).
    noisy = affinity + rng.gumbel(size=affinity.shape)
    return np.argsort(-noisy)[:count].astype(np.int64)
