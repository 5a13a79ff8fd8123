"""How instances should share the queue: a simulation of closed-loop callers.

Event-driven, no model and no server: ``callers`` closed-loop clients, ``instances``
execution instances, a batch of n rows taking ``fixed + per_row * n`` ms, and each
answered caller back after a random round trip of up to ``rtt`` ms. Two rules for the
rows an instance that falls free takes:

- ``whole``: the whole queue, up to the batch limit (what Triton does);
- ``share``: ``policy.balanced_rows``, its share of the queued and running rows.

Prints throughput, p50, p99 and the share of one-row batches per rule and cost model.
It explains the ResNet-18 measurement in bench/README.md (two one-thread instances,
p99 at twice p50 with ``whole``) and checks that ``share`` costs no throughput where a
batch is one fixed cost (a GPU), whether the instances run side by side or take turns on
one device.

    python bench/batch_share_sim.py
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from warpserve.server.batching.policy import balanced_rows

Rule = Callable[[int, int, int, int, int], int]  # limit, queued, running, own, instances


def whole(limit: int, queued: int, running: int, own: int, instances: int) -> int:
    return min(limit, queued)


RULES: dict[str, Rule] = {"whole": whole, "share": balanced_rows}


def simulate(
    rule: Rule,
    *,
    callers: int,
    instances: int,
    limit: int,
    fixed: float,
    per_row: float,
    rtt: float = 0.3,
    horizon: float = 200_000.0,
    one_device: bool = False,
) -> str:
    rng = random.Random(0)
    events: list[tuple[float, int, list[float]]] = []  # (time, instance or -1, arrivals)
    for _ in range(callers):
        heapq.heappush(events, (rtt * rng.random(), -1, []))
    queue: list[float] = []
    running = [0] * instances
    latencies: list[float] = []
    batches: list[int] = []
    device_free = 0.0  # one_device: the instances' batches run one after another
    while events:
        now, instance, answered = heapq.heappop(events)
        if now > horizon:
            break
        if instance < 0:
            queue.append(now)
        else:
            running[instance] = 0
            for arrived in answered:
                latencies.append(now - arrived)
                heapq.heappush(events, (now + rtt * (0.5 + rng.random()), -1, []))
        for free in (i for i in range(instances) if not running[i]):
            if not queue:
                break
            rows = rule(limit, len(queue), sum(running), 0, instances)
            taken, queue[:] = queue[:rows], queue[rows:]
            running[free] = rows
            batches.append(rows)
            start = max(now, device_free) if one_device else now
            done = start + fixed + per_row * rows
            device_free = done if one_device else device_free
            heapq.heappush(events, (done, free, taken))
    kept = sorted(latencies[len(latencies) // 10 :])  # past the start
    rate = len(kept) / (horizon * 0.9) * 1000

    def pct(p: float) -> float:
        return kept[int(p * len(kept))]

    ones = sum(1 for b in batches if b == 1) / len(batches)
    return (
        f"{rate:8.1f}/s  p50 {pct(0.5):7.1f}  p99 {pct(0.99):7.1f} ms  one-row batches {ones:4.0%}"
    )


CASES = [
    ("a batch costs its rows (CNN, one CPU thread)", dict(fixed=1.0, per_row=19.0)),
    ("one fixed cost per batch (GPU)", dict(fixed=10.0, per_row=0.5)),
    ("both parts", dict(fixed=5.0, per_row=5.0)),
    ("one fixed cost, instances taking turns on one device", dict(fixed=10.0, per_row=0.5)),
]


def main() -> None:
    for title, cost in CASES:
        print(title)
        shared = "one device" in title
        for callers, instances, limit in ((16, 2, 8), (16, 2, 64), (64, 2, 64), (32, 4, 64)):
            for name, rule in RULES.items():
                result = simulate(
                    rule,
                    callers=callers,
                    instances=instances,
                    limit=limit,
                    one_device=shared,
                    **cost,
                )
                print(
                    f"  {callers:>2} callers, {instances} instances, limit {limit:>2}, "
                    f"{name:<5} {result}"
                )


if __name__ == "__main__":
    main()
