"""How the server will run a variant: which curve compile reports as served and chooses on."""

from __future__ import annotations

from warpserve.compile import choice, serving
from warpserve.compile.runners import Runner
from warpserve.compile.sweep import Point

ORT, TORCHSCRIPT, KERNELS = "onnxruntime_onnx", "pytorch_libtorch", "warpserve_kernels"


def _curve(batch_1_ms: float, batch_64_ms: float) -> list[Point]:
    return [
        Point(1, 10, batch_1_ms, batch_1_ms, 1e3 / batch_1_ms),
        Point(64, 10, batch_64_ms, batch_64_ms, 64e3 / batch_64_ms),
    ]


TINY, TINY_ONE_THREAD = _curve(0.01, 0.1), _curve(0.012, 0.15)


def test_a_tiny_model_that_runs_inline_is_served_and_chosen_on_one_thread() -> None:
    served, points = serving.decide(ORT, TINY, TINY_ONE_THREAD)
    assert served.inline and served.threads == serving.ONE_THREAD
    assert points is TINY_ONE_THREAD
    assert "inline on the event loop" in served.why


def test_a_model_over_the_servers_inline_limits_is_served_on_every_core() -> None:
    slow_single = _curve(0.5, 3.0)  # batch 1 over 200 us
    served, points = serving.decide(ORT, slow_single, _curve(0.6, 5.0))
    assert (served.inline, served.threads) == (False, serving.EVERY_CORE)
    assert points is slow_single
    slow_full = _curve(0.05, 2.5)  # a full batch over 2 ms
    assert not serving.decide(ORT, slow_full, _curve(0.06, 4.0))[0].inline


def test_a_format_that_never_runs_inline_keeps_its_measured_curve() -> None:
    served, points = serving.decide(TORCHSCRIPT, TINY, None)
    assert (served.inline, served.threads) == (False, serving.EVERY_CORE)
    assert points is TINY and "never runs inline" in served.why
    # Inline without a single-threaded form: served inline, on the threads measured.
    served, points = serving.decide(ORT, TINY, None)
    assert (served.inline, served.threads) == (True, serving.EVERY_CORE) and points is TINY


def test_a_kernel_plan_runs_inline_by_the_same_rule_on_its_own_threads() -> None:
    served, points = serving.decide(KERNELS, TINY, None)
    assert (served.inline, served.threads) == (True, serving.EVERY_CORE) and points is TINY
    assert "keeps its own thread count" in served.why
    slow_full = _curve(0.05, 2.5)  # a full batch over 2 ms
    assert serving.decide(KERNELS, slow_full, None)[0].inline is False


def test_a_model_whose_full_batch_passes_2_ms_is_served_inline_up_to_the_batch_under_it() -> None:
    # The server's rule (version._choose_execution): the largest batch under 2 ms is the
    # most an inline run takes; bigger requests run on the worker thread, one thread too.
    every = [Point(1, 10, 0.05, 0.05, 2e4), Point(16, 10, 0.8, 0.8, 2e4), _curve(0.05, 3.0)[1]]
    one = [Point(p.batch, 10, p.median_ms * 1.5, p.p99_ms * 1.5, p.throughput) for p in every]
    served, points = serving.decide(ORT, every, one)
    assert (served.inline, served.inline_rows, served.threads) == (True, 16, serving.ONE_THREAD)
    assert points is one and "up to batches of 16" in served.why
    assert served.as_dict()["inline_rows"] == 16
    # Under MIN_INLINE_ROWS no batch is worth running inline: worker threads.
    tiny_batches = [Point(1, 10, 0.05, 0.05, 2e4), Point(2, 10, 0.5, 0.5, 4e3), every[2]]
    assert choice.inline_rows(tiny_batches) is None
    assert not serving.decide(ORT, tiny_batches, None)[0].inline
    # Positive control: a full batch under 2 ms runs inline with no cap.
    assert choice.inline_rows(TINY) == 0 and serving.decide(ORT, TINY, None)[0].inline_rows == 0


class _Instance:
    def __init__(self, single: bool) -> None:
        self.single = single
        self.closed = False

    def execute(self, inputs: dict) -> dict:
        return inputs

    def single_threaded(self) -> _Instance | None:
        return _Instance(False) if self.single else None

    def close(self) -> None:
        self.closed = True


def test_a_one_thread_runner_only_where_the_server_would_run_one() -> None:
    runner = Runner(_Instance(True), True, "server backend")
    opened = serving.one_thread_runner(ORT, runner)
    assert opened is not None and opened.instance is not runner.instance
    assert opened.note == "server backend, 1 thread"
    assert serving.one_thread_runner(TORCHSCRIPT, runner) is None  # never inline
    assert serving.one_thread_runner(ORT, Runner(_Instance(False), True, "")) is None
