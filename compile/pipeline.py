"""The compile pipeline: export once, build each target, check, measure, choose, write."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warpserve.compile import choice as choosing
from warpserve.compile import parity, report, serving, sweep
from warpserve.compile.errors import NoVariantError, UsageError
from warpserve.compile.export import as_tensors, export_program, reference, run_eager, summarize
from warpserve.compile.modelconfig import output_specs
from warpserve.compile.runners import Runner, open_runner
from warpserve.compile.serving import Serving
from warpserve.compile.source import ModelSource, specs_from_program
from warpserve.compile.specs import TensorSpec, check_examples, random_examples, specs_from_examples
from warpserve.compile.variants import TARGETS, BuildContext, Refused, Skipped, Target
from warpserve.server.cpus import usable_cores

Progress = Callable[[str, float], None]
NEEDS_PROGRAM = frozenset(TARGETS) - {"torchscript", "kernels"}


@dataclass
class CompileRequest:
    source: ModelSource
    name: str
    repository: Path
    version: int | None = None
    inputs: list[TensorSpec] | None = None
    examples: dict[str, np.ndarray] | None = None
    output_names: list[str] | None = None
    max_batch_size: int = 32
    targets: list[str] = field(default_factory=lambda: ["onnx", "ort", "ort-int8"])
    budget_ms: float | None = None
    keep_all: bool = False
    tolerances: dict[str, parity.Tolerance] = field(
        default_factory=lambda: dict(parity.DEFAULT_TOLERANCES)
    )
    batch_sizes: list[int] | None = None
    seconds_per_point: float = 0.2
    extra_files: dict[str, str] = field(default_factory=dict)  # written into the version
    # Rows the drift reference is taken from (default: the example inputs), and names
    # of an input's features (its values per row, in order) for metrics and status.
    reference_inputs: dict[str, np.ndarray] | None = None
    feature_names: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class VariantResult:
    target: Target
    status: str  # passed, rejected, failed, skipped
    reason: str = ""
    build_s: float = 0.0
    servable: bool = False
    runs_on: str = ""
    parity: parity.Parity | None = None
    points: list[sweep.Point] = field(default_factory=list)  # as the server will run it
    serving: Serving | None = None
    # Every curve measured, by thread setting (see `serving`): the served one and, where
    # the variant was also measured another way, that one.
    curves: dict[str, list[sweep.Point]] = field(default_factory=dict)
    folder: Path | None = None


@dataclass
class Outcome:
    report: dict
    version_dirs: list[Path]

    @property
    def version_dir(self) -> Path:
        """The folder of the chosen variant (the highest version written)."""
        return self.version_dirs[-1]


def resolve_inputs(request: CompileRequest) -> tuple[list[TensorSpec], dict[str, np.ndarray]]:
    specs, examples, source = request.inputs, request.examples, request.source
    if specs is None and examples is not None:
        specs = specs_from_examples(examples)
    if specs is None and source.program is not None:
        specs = specs_from_program(source.program)
    if specs is None:
        specs = source.inputs
    if not specs:
        raise UsageError(
            "the inputs are unknown: pass --input NAME:DIMS:DTYPE for each input, or "
            "--example-inputs FILE.npz"
        )
    if examples is None:
        examples = random_examples(specs)
    check_examples(specs, examples)
    arguments = source.argument_names()
    if arguments and len(arguments) != len(specs) and not source.scripted:
        raise UsageError(
            f"the model's forward() takes {len(arguments)} inputs ({', '.join(arguments)}), "
            f"but {len(specs)} are declared ({', '.join(s.name for s in specs)})"
        )
    return specs, examples


def compile_model(request: CompileRequest, progress: Progress) -> Outcome:
    if request.max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1")
    from warpserve.compile import output

    model_dir = request.repository / request.name
    output.plan_versions(model_dir, request.version, 1)  # fail before the long part
    specs, examples = resolve_inputs(request)
    names = [s.name for s in specs]
    progress("running eager PyTorch", 0.0)
    ref = reference(request.source.module, examples, names, request.output_names)
    outputs = output_specs(ref.output_names, ref.outputs)
    program = None
    if NEEDS_PROGRAM.intersection(request.targets) and not request.source.scripted:
        progress("exporting with torch.export", 0.02)
        program = export_program(request.source, examples, names, request.max_batch_size)
    batches = request.batch_sizes or sweep.default_batch_sizes(request.max_batch_size)
    with tempfile.TemporaryDirectory(prefix="warpserve-compile-") as work:
        ctx = BuildContext(
            request.source,
            program,
            specs,
            ref.output_names,
            examples,
            request.max_batch_size,
            Path(work),
        )
        results: list[VariantResult] = []
        runners: dict[str, Runner] = {}
        try:
            for i, name in enumerate(request.targets):
                step = _Step(
                    progress, 0.05 + 0.6 * i / len(request.targets), 0.6 / len(request.targets)
                )
                result, runner = _variant(TARGETS[name], ctx, outputs, ref.outputs, request, step)
                results.append(result)
                if runner is not None:
                    runners[name] = runner
            eager = _measure(request, examples, names, batches, results, runners, progress)
        finally:
            for runner in runners.values():
                runner.close()
        built = report.build(request, specs, outputs, results, eager, program is not None)
        return _finish(request, built, results, examples, ref.outputs, outputs, progress)


class _Step:
    """Progress within one variant's share of the bar."""

    def __init__(self, progress: Progress, start: float, span: float) -> None:
        self._progress, self._start, self._span = progress, start, span

    def __call__(self, message: str, fraction: float) -> None:
        self._progress(message, self._start + self._span * fraction)


def _variant(
    target: Target,
    ctx: BuildContext,
    outputs: list[TensorSpec],
    expected: dict[str, np.ndarray],
    request: CompileRequest,
    step: _Step,
) -> tuple[VariantResult, Runner | None]:
    """Build and check one target; its runner stays open for the measurement if it passed."""
    folder = ctx.work / target.name
    folder.mkdir()
    step(f"{target.name}: building", 0.0)
    started = time.perf_counter()
    try:
        target.build(ctx, folder / target.filename)
    except Skipped as exc:
        return VariantResult(target, "skipped", str(exc)), None
    except Refused as exc:
        return VariantResult(target, "rejected", f"unsupported: {exc}"), None
    except UsageError:
        raise
    except Exception as exc:
        return VariantResult(target, "failed", f"build: {summarize(exc)}"), None
    result = VariantResult(target, "failed", build_s=time.perf_counter() - started, folder=folder)
    try:
        runner = open_runner(
            target.platform, folder / target.filename, ctx.inputs, outputs, ctx.max_batch_size
        )
    except Exception as exc:
        result.reason = f"load: {summarize(exc)}"
        return result, None
    result.servable, result.runs_on = runner.servable, runner.note
    step(f"{target.name}: checking against PyTorch", 0.5)
    _check(result, runner, ctx, expected, request)
    if result.status != "passed":
        runner.close()
        return result, None
    return result, runner


def _check(
    result: VariantResult,
    runner: Runner,
    ctx: BuildContext,
    expected: dict[str, np.ndarray],
    request: CompileRequest,
) -> None:
    tolerance = request.tolerances[result.target.precision]
    try:
        result.parity = parity.check(runner, ctx.examples, expected, tolerance)
    except Exception as exc:
        result.reason = f"run: {summarize(exc)}"
        return
    if not result.parity.passed:
        result.status, result.reason = "rejected", f"parity: {result.parity.worst()}"
        return
    result.status = "passed"


def _measure(
    request: CompileRequest,
    examples: dict[str, np.ndarray],
    names: list[str],
    batches: list[int],
    results: list[VariantResult],
    runners: dict[str, Runner],
    progress: Progress,
) -> list[sweep.Point]:
    """Every passed variant and eager PyTorch over the batch sizes, side by side (see
    ``sweep``); fills each variant's points and returns eager's."""
    previous = _torch_threads()

    def as_given() -> None:  # torch-based variants run with the caller's thread count
        _set_torch_threads(previous)

    eager = _eager_contenders(request, names)
    one_thread = _one_thread_runners(results, runners)
    variants = [sweep.Contender(name, run, as_given) for name, run in runners.items()]
    variants += [
        sweep.Contender(_one_thread_name(name), run, as_given) for name, run in one_thread.items()
    ]
    contenders = [*eager, *variants]
    listed = ", ".join(runners) or "eager PyTorch only"

    def on_batch(batch: int) -> None:
        done = (batches.index(batch) + 1) / len(batches)
        progress(f"measured batch {batch} ({listed})", 0.65 + 0.3 * done)

    progress(f"measuring {listed} beside eager PyTorch", 0.65)
    try:
        measured = sweep.compare(
            contenders, examples, batches, request.seconds_per_point, on_batch=on_batch
        )
    finally:
        _set_torch_threads(previous)
        for runner in one_thread.values():
            runner.close()
    baseline = [c.name for c in eager]
    for result in results:
        name = result.target.name
        if name not in runners:
            continue
        every = measured.against(name, baseline)
        single = measured.against(_one_thread_name(name), baseline) if name in one_thread else None
        result.serving, result.points = serving.decide(result.target.platform, every, single)
        result.curves = {serving.EVERY_CORE: every}
        if single is not None:
            result.curves[serving.ONE_THREAD] = single
    return measured.best_of(baseline)


def _one_thread_runners(
    results: list[VariantResult], runners: dict[str, Runner]
) -> dict[str, Runner]:
    """The passed variants the server may run inline on one thread, opened that way."""
    opened: dict[str, Runner] = {}
    for result in results:
        runner = runners.get(result.target.name)
        single = (
            None if runner is None else serving.one_thread_runner(result.target.platform, runner)
        )
        if single is not None:
            opened[result.target.name] = single
    return opened


def _one_thread_name(name: str) -> str:
    return f"{name}/{serving.ONE_THREAD}"


def _eager_contenders(request: CompileRequest, names: list[str]) -> list[sweep.Contender]:
    """Eager PyTorch with one intra-op thread and with every usable core.

    Which wins depends on the model and on the machine's load: torch's OpenMP workers
    spin-wait, and on a shared machine two of them ran small models several times slower
    than one. A variant is compared with the faster in each round. The caller's setting (the
    demo build pins one thread for reproducible golden outputs) comes back after.
    """
    module = request.source.module

    def run(inputs: dict[str, np.ndarray]) -> object:
        return run_eager(module, as_tensors(inputs, names))

    def threads(count: int) -> Callable[[], None]:
        return lambda: _set_torch_threads(count)

    return [
        sweep.Contender(f"eager/{count} thread(s)", run, threads(count))
        for count in sorted({1, usable_cores()})
    ]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(count: int) -> None:
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _finish(
    request: CompileRequest,
    built: dict,
    results: list[VariantResult],
    examples: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    outputs: list[TensorSpec],
    progress: Progress,
) -> Outcome:
    from warpserve.compile import writing

    candidates = [
        choosing.Candidate(r.target.name, r.servable, r.points)
        for r in results
        if r.status == "passed"
    ]
    chosen = choosing.choose(candidates, request.budget_ms)
    if chosen is None:
        report.add_failure(built, results, request.budget_ms)
        raise NoVariantError(built["failure"], built)
    progress("writing the model version", 0.97)
    dirs = writing.write(request, built, results, chosen, examples, expected, outputs)
    progress("done", 1.0)
    return Outcome(built, dirs)
