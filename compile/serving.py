"""How the server will run a variant, so that compile chooses on the speed it will serve at.

The sweep measures each variant with one instance and every core. A server with
execution=auto (the default) runs a model whose runs take microseconds on its event loop
instead (`server/lifecycle/version.py`, `_choose_execution`), and there ONNX Runtime gets
a session without an intra-op pool (its instance's `single_threaded`): one thread. A
variant measured on two threads and served on one would be chosen on a speed it never
has in service.

So a variant whose format may run inline and whose instance offers `single_threaded` is
measured a second time on one thread, side by side with the rest. Where its every-core
curve passes the server's rule (`choice.inline_rows`, the server deciding on the instance
as loaded; requests bigger than an inline run takes go to its worker thread, on the same
one-thread instance), the one-thread curve is the one reported as served and chosen on;
otherwise the every-core curve, with the one-thread curve kept in the report beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from warpserve.compile.choice import inline_rows
from warpserve.compile.runners import Runner
from warpserve.compile.sweep import Point
from warpserve.server.backends import spec as backend_spec
from warpserve.server.lifecycle.execution import INLINE_BATCH_LIMIT_NS, INLINE_THRESHOLD_NS

ONE_THREAD = "1 thread"
EVERY_CORE = "every core"


@dataclass(frozen=True)
class Serving:
    inline: bool  # the server will run it on its event loop
    threads: str  # ONE_THREAD or EVERY_CORE: how the served curve was measured
    why: str
    inline_rows: int = 0  # inline batches up to this many rows (0: any), bigger on a thread

    def as_dict(self) -> dict[str, object]:
        return {
            "inline": self.inline,
            "inline_rows": self.inline_rows,
            "threads": self.threads,
            "why": self.why,
        }


def may_run_inline(platform: str) -> bool:
    spec = backend_spec.by_platform(platform)
    return spec is not None and spec.capabilities.inline


def one_thread_runner(platform: str, runner: Runner) -> Runner | None:
    """The variant as the server runs it inline (one thread), or None where the format
    never runs inline or has no single-threaded form (its threads are its own then)."""
    if not may_run_inline(platform):
        return None
    make = getattr(runner.instance, "single_threaded", None)
    instance = make() if make is not None else None
    if instance is None:
        return None
    return Runner(instance, runner.servable, f"{runner.note}, {ONE_THREAD}")


def decide(
    platform: str, every_core: list[Point], one_thread: list[Point] | None
) -> tuple[Serving, list[Point]]:
    """How the server will run the variant, and the curve measured that way."""
    limits = (
        f"a batch-1 run under {INLINE_THRESHOLD_NS / 1e3:.0f} us and the largest batch under "
        f"{INLINE_BATCH_LIMIT_NS / 1e6:.0f} ms, else batches of as many rows as stay under it"
    )
    if not may_run_inline(platform):
        why = f"{platform} never runs inline: served on worker threads, as measured"
        return Serving(False, EVERY_CORE, why), every_core
    rows = inline_rows(every_core)
    if rows is None:
        why = f"not inline (the server's rule: {limits}): served on worker threads"
        return Serving(False, EVERY_CORE, why), every_core
    where = "inline on the event loop" + (f" up to batches of {rows}" if rows else "")
    if one_thread is None:
        why = f"{where} ({limits}); the backend keeps its own thread count there"
        return Serving(True, EVERY_CORE, why, rows), every_core
    why = f"{where} ({limits}), where it runs on one thread"
    if rows:
        why += ", as do bigger requests on its worker thread"
    return Serving(True, ONE_THREAD, why, rows), one_thread
