"""ModelStatistics of several processes add up to one server's."""

from __future__ import annotations

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.control.statsum import sum_statistics


def stats(name: str, version: str, n: int, last: int, batch: int) -> pb.ModelStatistics:
    duration = pb.StatisticDuration(count=n, ns=n * 1000)
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=last,
        inference_count=n,
        execution_count=n,
        inference_stats=pb.InferStatistics(success=duration, queue=duration),
        batch_stats=[pb.InferBatchStatistics(batch_size=batch, compute_infer=duration)],
    )


def test_counts_and_durations_add_per_version_and_the_latest_inference_wins() -> None:
    one = pb.ModelStatisticsResponse(
        model_stats=[stats("a", "1", 3, 100, 1), stats("a", "2", 1, 50, 1)]
    )
    two = pb.ModelStatisticsResponse(
        model_stats=[stats("a", "1", 5, 90, 4), stats("b", "1", 2, 10, 1)]
    )
    total = sum_statistics([one, two])
    keyed = {(s.name, s.version): s for s in total.model_stats}
    assert list(keyed) == [("a", "1"), ("a", "2"), ("b", "1")]
    a1 = keyed["a", "1"]
    assert (a1.inference_count, a1.execution_count, a1.last_inference) == (8, 8, 100)
    assert a1.inference_stats.success.count == 8 and a1.inference_stats.success.ns == 8000
    assert a1.inference_stats.fail.count == 0
    assert [(b.batch_size, b.compute_infer.count) for b in a1.batch_stats] == [(1, 3), (4, 5)]
    a2 = keyed["a", "2"]  # one process's numbers, unchanged
    assert (a2.inference_count, a2.last_inference, a2.inference_stats.queue.ns) == (1, 50, 1000)


def test_nothing_to_sum_is_an_empty_answer() -> None:
    assert sum_statistics([]) == pb.ModelStatisticsResponse()
    assert sum_statistics([pb.ModelStatisticsResponse()] * 2) == pb.ModelStatisticsResponse()
