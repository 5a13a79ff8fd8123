"""ModelStatistics of several processes summed into one answer, as one server's."""

from __future__ import annotations

from collections.abc import Iterable

from warpserve.protos import grpc_service_pb2 as pb

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def _add(total: pb.StatisticDuration, part: pb.StatisticDuration) -> None:
    total.count += part.count
    total.ns += part.ns


def _add_model(total: pb.ModelStatistics, part: pb.ModelStatistics) -> None:
    total.last_inference = max(total.last_inference, part.last_inference)
    total.inference_count += part.inference_count
    total.execution_count += part.execution_count
    for name in DURATIONS:
        _add(getattr(total.inference_stats, name), getattr(part.inference_stats, name))
    batches = {b.batch_size: b for b in total.batch_stats}
    for batch in part.batch_stats:
        into = batches.get(batch.batch_size)
        if into is None:
            into = batches[batch.batch_size] = total.batch_stats.add(batch_size=batch.batch_size)
        for name in BATCH_DURATIONS:
            _add(getattr(into, name), getattr(batch, name))


def sum_statistics(replies: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """Per (model, version): counts and durations added, the latest last_inference."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for reply in replies:
        for stats in reply.model_stats:
            key = (stats.name, stats.version)
            if key not in merged:
                merged[key] = pb.ModelStatistics(name=stats.name, version=stats.version)
            _add_model(merged[key], stats)
    response = pb.ModelStatisticsResponse()
    for key in sorted(merged, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0)):
        stats = merged[key]
        stats.batch_stats.sort(key=lambda b: b.batch_size)
        response.model_stats.append(stats)
    return response
