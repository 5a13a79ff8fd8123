"""The compile pipeline: export once, build each target, check, measure, choose, write."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warpserve.compile import choice as choosing
from warpserve.compile import parity, report, sweep
from warpserve.compile.errors import NoVariantError, UsageError
from warpserve.compile.export import as_tensors, export_program, reference, run_eager, summarize
from warpserve.compile.modelconfig import output_specs
from warpserve.compile.runners import Runner, open_runner
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
    points: list[sweep.Point] = field(default_factory=list)
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
        results = []
        for i, name in enumerate(request.targets):
            step = _Step(
                progress, 0.05 + 0.85 * i / len(request.targets), 0.85 / len(request.targets)
            )
            results.append(
                _variant(TARGETS[name], ctx, outputs, ref.outputs, request, batches, step)
            )
        progress("measuring eager PyTorch", 0.92)
        eager = _eager_points(request, examples, names, batches)
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
    batches: list[int],
    step: _Step,
) -> VariantResult:
    folder = ctx.work / target.name
    folder.mkdir()
    step(f"{target.name}: building", 0.0)
    started = time.perf_counter()
    try:
        target.build(ctx, folder / target.filename)
    except Skipped as exc:
        return VariantResult(target, "skipped", str(exc))
    except Refused as exc:
        return VariantResult(target, "rejected", f"unsupported: {exc}")
    except UsageError:
        raise
    except Exception as exc:
        return VariantResult(target, "failed", f"build: {summarize(exc)}")
    result = VariantResult(target, "failed", build_s=time.perf_counter() - started, folder=folder)
    try:
        runner = open_runner(
            target.platform, folder / target.filename, ctx.inputs, outputs, ctx.max_batch_size
        )
    except Exception as exc:
        result.reason = f"load: {summarize(exc)}"
        return result
    try:
        _check_and_measure(result, runner, ctx, expected, request, batches, step)
    finally:
        runner.close()
    return result


def _check_and_measure(
    result: VariantResult,
    runner: Runner,
    ctx: BuildContext,
    expected: dict[str, np.ndarray],
    request: CompileRequest,
    batches: list[int],
    step: _Step,
) -> None:
    result.servable, result.runs_on = runner.servable, runner.note
    name = result.target.name
    step(f"{name}: checking against PyTorch", 0.2)
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

    def on_point(point: sweep.Point) -> None:
        done = 0.3 + 0.7 * (batches.index(point.batch) + 1) / len(batches)
        step(f"{name}: batch {point.batch}: {point.median_ms:.3f} ms median", done)

    result.points = sweep.sweep(runner, ctx.examples, batches, request.seconds_per_point, on_point)


def _eager_points(
    request: CompileRequest, examples: dict[str, np.ndarray], names: list[str], batches: list[int]
) -> list[sweep.Point]:
    """Eager PyTorch at its best per batch size: one intra-op thread and every usable core.

    Which wins depends on the model and on the machine's load: torch's OpenMP workers
    spin-wait, and on a shared machine two of them ran small models several times slower
    than one. A variant is compared with the faster. The caller's setting (the demo build
    pins one thread for reproducible golden outputs) comes back after.
    """
    import torch

    module = request.source.module

    def run(inputs: dict[str, np.ndarray]) -> object:
        return run_eager(module, as_tensors(inputs, names))

    previous = torch.get_num_threads()
    curves = []
    try:
        for threads in sorted({1, usable_cores()}):
            torch.set_num_threads(threads)
            curves.append(sweep.sweep(run, examples, batches, request.seconds_per_point))
    finally:
        torch.set_num_threads(previous)
    return [max(points, key=lambda p: p.throughput) for points in zip(*curves, strict=True)]


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
