"""Batching and queueing policy, read from a model config's dynamic_batching block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.request import QueuedRequest
from warpserve.server.errors import InvalidInput, LoadShed, ModelLoadError
from warpserve.server.repository.parameters import BATCHING, integer_list_with_zeros

# Load shedding by priority: per level, how many queued requests (all levels together)
# make the version refuse new requests of that level. 0: never.
SHED_QUEUE_SIZE = integer_list_with_zeros(
    "shed_queue_size",
    "one per priority level: refuse a request of that level while this many requests "
    "are queued (0: never), e.g. 0,64 keeps level 1 and sheds level 2 at 64",
)


@dataclass(frozen=True)
class QueuePolicy:
    max_queue_size: int = 0  # 0: unbounded
    default_timeout_us: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False  # Triton's TimeoutAction DELAY: keep, don't reject


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 0  # 0: the model takes no batch dimension
    dynamic: bool = False  # dynamic_batching present in the config
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 1
    default_priority: int = 1
    default_queue: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queues: dict[int, QueuePolicy] = field(default_factory=dict)
    # warpserve: dispatch as soon as an instance is idle instead of waiting up to
    # max_queue_delay for a fuller batch (parameters { key: "batching" value: "triton" }
    # restores Triton's wait).
    eager: bool = True
    # warpserve: queued requests at which each level is shed (see SHED_QUEUE_SIZE);
    # empty when no level is ever shed.
    shed_queue_size: tuple[int, ...] = ()

    def queue_for(self, level: int) -> QueuePolicy:
        return self.priority_queues.get(level, self.default_queue)

    def request_queue(self, params: dict[str, Any]) -> tuple[int, int]:
        """A request's priority level and queue timeout (us, 0: none) from its
        parameters, checked."""
        if not params:
            return self.default_priority, self.queue_for(self.default_priority).default_timeout_us
        priority = _priority(params, self.priority_levels, self.default_priority)
        queue = self.queue_for(priority)
        timeout_us = queue.default_timeout_us
        override = _int_param(params, "timeout")
        if override and queue.allow_timeout_override:
            timeout_us = override if not timeout_us else min(timeout_us, override)
        return priority, timeout_us

    @property
    def batch_limit(self) -> int:
        """Most rows one execution may take."""
        return self.max_batch_size if self.dynamic and self.max_batch_size > 0 else 0

    def shed(self, model: str, level: int, queued: int) -> LoadShed | None:
        """The refusal of a request of 0-based ``level`` while ``queued`` requests (all
        levels) wait, if that is its level's shed size or more: lower levels shed first, so
        a spike leaves higher ones their latency."""
        size = self.shed_queue_size[level]
        if not size or queued < size:
            return None
        return LoadShed(
            f"load shed: model '{model}' has {queued} requests queued, at or over {size} for "
            f"priority {level + 1} (shed_queue_size); retry with backoff or send at a higher "
            "priority"
        )

    def trim_to_preferred(self, batch: list[QueuedRequest]) -> list[QueuedRequest]:
        """The longest leading part of ``batch`` whose rows make a preferred batch size;
        all of it when no part does."""
        preferred = self.preferred_batch_sizes
        if not preferred or len(batch) == 1:
            return batch
        rows, best = 0, 0
        for i, request in enumerate(batch):
            rows += request.rows
            if rows in preferred:
                best = i + 1
        return batch[:best] if best else batch


def _queue_policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=p.max_queue_size,
        default_timeout_us=p.default_timeout_microseconds,
        allow_timeout_override=p.allow_timeout_override,
        delay_on_timeout=p.timeout_action == mc.ModelQueuePolicy.DELAY,
    )


def balanced_rows(limit: int, queued: int, running: int, own: int, instances: int) -> int:
    """The rows an instance that falls free takes in eager mode (Triton mode takes up to
    ``limit``, as Triton does): its share of the outstanding rows (``queued``, plus
    ``running`` on every instance, ``own`` of them on this one), at least one row and
    at most ``limit``.

    Taking the whole queue instead splits closed-loop callers of a model whose batch
    costs about what its rows cost one by one (a CNN on one CPU thread per instance) into
    two groups: the instance that falls free first serves the first caller of a burst
    alone and keeps cycling the few it answers, while another collects everyone else into
    one long batch. Throughput is the same, latency bimodal: ResNet-18 on two one-thread
    instances at 16 callers put 40 % of its batches at one row, and p99 was twice p50. In
    a simulation of closed-loop callers (``bench/batch_share_sim.py``) this share was never
    worse than the whole queue, whether a batch costs its rows or one fixed cost (a GPU).
    """
    share = -(-(queued + running) // instances) - own
    return max(1, min(limit, queued, share))


def from_config(config: mc.ModelConfig) -> BatchingPolicy:
    dynamic = config.HasField("dynamic_batching")
    db = config.dynamic_batching
    levels = max(1, db.priority_levels)
    default_level = db.default_priority_level or (levels + 1) // 2 if db.priority_levels else 1
    mode = BATCHING.read(config)
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic,
        preferred_batch_sizes=tuple(sorted(db.preferred_batch_size)),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        priority_levels=levels,
        default_priority=min(max(default_level, 1), levels),
        default_queue=_queue_policy(db.default_queue_policy),
        priority_queues={int(k): _queue_policy(v) for k, v in db.priority_queue_policy.items()},
        eager=mode != "triton",
        shed_queue_size=_shed_sizes(config, levels),
    )


def _shed_sizes(config: mc.ModelConfig, levels: int) -> tuple[int, ...]:
    sizes = SHED_QUEUE_SIZE.read(config)
    if not sizes:
        return ()
    if len(sizes) != levels or not config.HasField("dynamic_batching"):
        raise ModelLoadError(
            f"model '{config.name}': parameter shed_queue_size has {len(sizes)} values for "
            f"{levels} priority level(s); give one per dynamic_batching priority level, "
            "0 for a level that is never shed"
        )
    return sizes if any(sizes) else ()


def _int_param(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"request parameter '{key}' must be an integer, got {value!r}")
    if value < 0:
        raise InvalidInput(f"request parameter '{key}' must be >= 0, got {value}")
    return value


def _priority(params: dict[str, Any], levels: int, default: int) -> int:
    value = _int_param(params, "priority")
    if value == 0:
        return default
    if value > levels:
        raise InvalidInput(
            f"request priority {value} is outside the model's 1..{levels} priority levels"
        )
    return value
