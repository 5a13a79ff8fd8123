"""Counts of what the registry did to a model's versions, for the metrics exporter."""

from __future__ import annotations

from dataclasses import dataclass, field

EventKey = tuple[str, int, str]  # (model, version, outcome or reason)


@dataclass
class RegistryEvents:
    """Counters the metrics exporter reads (from its thread, on a copy of each table)."""

    rollouts: dict[EventKey, int] = field(default_factory=dict)  # outcome per version
    rollbacks: dict[EventKey, int] = field(default_factory=dict)  # reason per version left
    # Answers a fallback model gave: (model asked for, fallback model, reason).
    fallbacks: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def count(self, table: dict[EventKey, int], model: str, version: int, label: str) -> None:
        key = (model, version, label)
        table[key] = table.get(key, 0) + 1
