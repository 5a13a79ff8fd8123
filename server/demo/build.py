"""Build, cache and find the built-in demo model repository.

`warpserve serve` without a repository serves small models trained here on synthetic
data and written by the compile pipeline (`warpserve compile`'s, with the ONNX targets and
a short sweep) in Triton's layout. The build takes seconds, so it runs on first use and is
cached under a name that changes whenever the demo's or the compile pipeline's code changes.

torch is imported only when a build actually runs: finding a cached repository needs numpy
and the standard library alone, and torch stays an optional extra (`warpserve[torch]`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING

import numpy as np
from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc

from . import raw

if TYPE_CHECKING:
    from torch import nn

    from .train import TrainedModel

Report = Callable[[float], None]

Progress = Callable[[str, float], None]
POPULARITY = "recommender_popularity"
MODEL_NAMES = ("image_classifier", "fraud_scorer", "recommender", POPULARITY, raw.NAME)
GOLDEN_ATOL = 1e-4
GOLDEN_RTOL = 1e-4
# The ONNX targets only: AOTInductor's C++ build would take minutes of a first start on two
# cores, and ONNX Runtime serves on every machine. A short sweep keeps the first start within
# about a minute; `warpserve compile` measures longer.
DEMO_TARGETS = ("onnx", "ort")
SECONDS_PER_POINT = 0.1
# Sources whose change must invalidate a cached build: they decide the data, the models and
# the files written (with every module of the compile pipeline).
_SOURCES = ("data.py", "models.py", "train.py", "build.py", "raw.py")
_STALE_STAGING_S = 3600.0
# An output's class names, one per line (Triton's label_filename), beside config.pbtxt.
LABELS_FILE = "labels.txt"


class DemoBuildError(RuntimeError):
    """The demo repository could not be built (torch missing, or a model failed its check)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # a ModelConfig DataType name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension
    labels: tuple[str, ...] = ()  # class names by index, written to LABELS_FILE


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_batch_size: int
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    description: str
    train_weight: float  # share of the build's time, for the progress bar


MODEL_SPECS = (
    ModelSpec(
        "image_classifier",
        64,
        TensorSpec("IMAGE", "TYPE_FP32", (3, 32, 32)),
        (TensorSpec("PROBS", "TYPE_FP32", (2,), labels=("cat", "dog")),),
        "Small CNN telling 'cats' (horizontal stripes) from 'dogs' (vertical stripes) in "
        "noisy 3x32x32 images with colour distractors. PROBS = softmax over [cat, dog].",
        0.55,
    ),
    ModelSpec(
        "fraud_scorer",
        256,
        TensorSpec("TRANSACTION", "TYPE_FP32", (16,)),
        (TensorSpec("FRAUD_PROBABILITY", "TYPE_FP32", (1,)),),
        "MLP 16→64→32→1 scoring raw card transactions (amount, hour, merchant risk, "
        "distance, velocity, ...; standardisation is inside the graph). ~5 % are fraud. "
        "Ships a drift reference of its training transactions (drift_reference.json).",
        0.25,
    ),
    ModelSpec(
        "recommender",
        64,
        TensorSpec("USER_FEATURES", "TYPE_FP32", (16,)),
        (TensorSpec("ITEM_IDS", "TYPE_INT64", (10,)), TensorSpec("SCORES", "TYPE_FP32", (10,))),
        "Two-tower recommender: an MLP user tower against a 1000-item embedding table; "
        "torch.topk inside the graph returns the 10 best item ids and their scores. Its "
        f"fallback_model is {POPULARITY}; priority 2 requests are shed (and answered by the "
        "fallback) while 32 requests are queued.",
        0.18,
    ),
    ModelSpec(
        POPULARITY,
        64,
        TensorSpec("USER_FEATURES", "TYPE_FP32", (16,)),
        (TensorSpec("ITEM_IDS", "TYPE_INT64", (10,)), TensorSpec("SCORES", "TYPE_FP32", (10,))),
        "Popularity ranking, the recommender's fallback: the 10 items most training users "
        "interacted with (scores: the share of users), the same for every user.",
        0.02,
    ),
)
# The recommender under load: untagged requests keep priority 1 and are never shed;
# requests sent with priority 2 are refused while 32 requests are queued, and its
# fallback answers them instead.
RECOMMENDER_DEGRADATION = {
    "fallback_model": POPULARITY,
    "shed_queue_size": "0,32",
}


# --- public API -----------------------------------------------------------------------------


def build_demo_repository(target: Path, progress: Progress | None = None) -> Path:
    """Train the demo models and compile them into `target` in Triton's layout.

    Each model gets config.pbtxt (batching settings from the measured curve) and version 1
    with the chosen ONNX variant, golden/{inputs,outputs}.npz (outputs from PyTorch),
    compile_report.{json,md} and training.json; `target` gets a README.md. Raises
    DemoBuildError when torch is missing or no variant reproduces PyTorch's outputs.
    """
    report = progress or (lambda message, fraction: None)
    train = _import_training()
    target.mkdir(parents=True, exist_ok=True)
    trained_models: dict[str, TrainedModel] = {}
    trainers: dict[str, Callable[[Report], TrainedModel]] = {
        "image_classifier": train.train_image_classifier,
        "fraud_scorer": train.train_fraud_scorer,
        "recommender": train.train_recommender,
        POPULARITY: lambda stage: train.popularity_ranker(trained_models["recommender"], stage),
    }
    done = 0.0
    with _torch_threads():
        for spec in MODEL_SPECS:
            started = time.perf_counter()
            stage = _stage_reporter(report, spec.name, done, spec.train_weight * 0.7)
            trained = trained_models[spec.name] = trainers[spec.name](stage)
            summary = _training_summary(spec, trained, time.perf_counter() - started)
            compiling = _compile_reporter(
                report, spec.name, done + spec.train_weight * 0.7, spec.train_weight * 0.3
            )
            compile_demo_model(
                target,
                spec,
                trained.module,
                trained.golden_inputs,
                summary,
                compiling,
                trained.reference_inputs,
            )
            done += spec.train_weight
    _configure(target / "recommender", RECOMMENDER_DEGRADATION, priority_levels=2)
    raw.write_image_classifier_jpeg(target)
    (target / "README.md").write_text(_readme(target), encoding="utf-8")
    report("demo repository ready", 1.0)
    return target


def default_demo_path() -> Path:
    """Where the cached demo repository lives: `$WARPSERVE_CACHE_DIR` or ~/.cache/warpserve."""
    root = os.environ.get("WARPSERVE_CACHE_DIR") or Path.home() / ".cache" / "warpserve"
    return Path(root) / f"demo-repository-{demo_version()}"


def demo_version() -> str:
    """A digest of the demo's and the compile pipeline's sources: editing them rebuilds."""
    import warpserve.compile  # its __init__ holds a docstring only: no torch here

    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    for path in sorted(Path(warpserve.compile.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_demo_repository(progress: bool = True) -> Path:
    """Return the cached demo repository, building it first if it is missing.

    The build goes to a temporary folder beside the cache entry and is renamed into place,
    so a crash never leaves a half-built repository behind; when two processes build at
    once, the first rename wins and the other discards its copy.
    """
    target = default_demo_path()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        reporter = StderrProgress() if progress else None
        build_demo_repository(staging, reporter)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_complete(repository: Path) -> bool:
    """True when every demo model has its config and version 1 (renamed into place only
    once complete, report included)."""
    return all(
        (repository / name / "config.pbtxt").is_file()
        and (repository / name / "1" / "compile_report.json").is_file()
        for name in MODEL_NAMES
    )


# --- building one model ---------------------------------------------------------------------


def _import_training() -> ModuleType:
    try:
        from . import train
    except ImportError as error:
        raise DemoBuildError(
            f"building the demo repository needs torch and onnxscript ({error}); install "
            "them with `pip install 'warpserve[torch]'`, or pass a model repository path"
        ) from error
    return train


def _training_summary(spec: ModelSpec, trained: TrainedModel, seconds: float) -> str:
    summary = {
        "model": spec.name,
        "held_out_metrics": trained.metrics,
        "training": trained.details,
        "train_seconds": round(seconds, 2),
        "compiled_by": f"warpserve compile, targets {', '.join(DEMO_TARGETS)}",
        "golden": {"rows": len(trained.golden_inputs), "computed_by": "pytorch"},
    }
    return json.dumps(summary, indent=2) + "\n"


def compile_demo_model(
    repository: Path,
    spec: ModelSpec,
    module: nn.Module,
    golden_inputs: np.ndarray,
    training_json: str,
    progress: Progress,
    reference_inputs: np.ndarray | None = None,
) -> None:
    """Version 1 of one demo model, through the compile pipeline (with a drift reference
    of ``reference_inputs`` when given).

    The pipeline checks every variant against PyTorch on the golden rows before writing
    it: a cache entry is reused forever, so an export that drifted must never be published.
    """
    from warpserve.compile.errors import CompileError
    from warpserve.compile.parity import DEFAULT_TOLERANCES, Tolerance
    from warpserve.compile.pipeline import CompileRequest, compile_model
    from warpserve.compile.source import ModelSource
    from warpserve.compile.specs import TensorSpec as InputSpec

    dtype = spec.input.data_type.removeprefix("TYPE_")
    request = CompileRequest(
        source=ModelSource(module, "module", f"demo model {spec.name} (server/demo/train.py)"),
        name=spec.name,
        repository=repository,
        version=1,
        inputs=[InputSpec(spec.input.name, spec.input.dims, dtype)],
        examples={spec.input.name: golden_inputs},
        output_names=[output.name for output in spec.outputs],
        max_batch_size=spec.max_batch_size,
        targets=list(DEMO_TARGETS),
        batch_sizes=sorted({1, 8, spec.max_batch_size}),
        seconds_per_point=SECONDS_PER_POINT,
        tolerances={**DEFAULT_TOLERANCES, "fp32": Tolerance(GOLDEN_ATOL, GOLDEN_RTOL)},
        extra_files={"training.json": training_json},
        reference_inputs=None if reference_inputs is None else {spec.input.name: reference_inputs},
        feature_names=_feature_names(spec),
    )
    try:
        compile_model(request, progress)
    except CompileError as error:
        raise DemoBuildError(f"{spec.name}: {error}") from error
    _add_labels(repository / spec.name, spec)


def _feature_names(spec: ModelSpec) -> dict[str, list[str]]:
    if spec.name != "fraud_scorer":
        return {}
    from .data import TRANSACTION_FEATURES

    return {spec.input.name: list(TRANSACTION_FEATURES)}


def _configure(folder: Path, parameters: dict[str, str], priority_levels: int) -> None:
    """Add warpserve parameters and priority levels to a compiled model's config."""
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    config.dynamic_batching.priority_levels = priority_levels
    config.dynamic_batching.default_priority_level = 1
    path.write_text(text_format.MessageToString(config), encoding="utf-8")


def _add_labels(folder: Path, spec: ModelSpec) -> None:
    """Class names beside the config, named by the output's label_filename (Triton's)."""
    labelled = [output for output in spec.outputs if output.labels]
    if not labelled:
        return
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    for output in labelled:
        (folder / LABELS_FILE).write_text("\n".join(output.labels) + "\n", "utf-8")
        next(o for o in config.output if o.name == output.name).label_filename = LABELS_FILE
    path.write_text(text_format.MessageToString(config), encoding="utf-8")


def _compile_reporter(report: Progress, name: str, start: float, span: float) -> Progress:
    def stage(message: str, fraction: float) -> None:
        report(f"compiling {name}: {message}", start + span * fraction)

    return stage


def _stage_reporter(report: Progress, name: str, start: float, span: float) -> Report:
    def stage(fraction: float) -> None:
        report(f"training {name}", start + span * fraction)

    report(f"training {name}", start)
    return stage


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
    # One intra-op thread: these models are too small to gain from more (measured: 2 threads
    # were barely faster on an idle 2-core box and 3-10x slower when other processes shared
    # it, as OpenMP workers spin-wait), and a single thread keeps float reductions in one
    # order, so golden outputs do not depend on the machine's core count. The caller's
    # setting is restored because the server may have tuned torch for its own work.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- cache ----------------------------------------------------------------------------------


def _publish(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)  # atomic on POSIX; fails if another builder got there first
    except OSError:
        if not is_complete(target):
            raise


def _remove_stale_staging(target: Path) -> None:
    # Staging folders of builds that crashed; a live concurrent build is far younger.
    cutoff = time.time() - _STALE_STAGING_S
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale.is_dir() and stale.stat().st_mtime < cutoff:
            shutil.rmtree(stale, ignore_errors=True)


class StderrProgress:
    """A one-line progress bar redrawn in place on a terminal; plain lines otherwise."""

    def __init__(self, stream: IO[str] | None = None, width: int = 30) -> None:
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._last_message = ""

    def __call__(self, message: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self._tty:
            self._redraw(message, fraction)
        elif message != self._last_message:
            # Logs get one line per stage, not one per epoch.
            self._stream.write(f"warpserve demo: {message} ({fraction:.0%})\n")
            self._stream.flush()
        self._last_message = message

    def _redraw(self, message: str, fraction: float) -> None:
        filled = round(self._width * fraction)
        bar = "#" * filled + "-" * (self._width - filled)
        end = "\n" if fraction >= 1.0 else ""
        self._stream.write(f"\r\x1b[2Kwarpserve demo [{bar}] {fraction:4.0%} {message}{end}")
        self._stream.flush()


def _readme(repository: Path) -> str:
    lines = [
        "# warpserve demo model repository",
        "",
        "Built by `warpserve serve` when no repository is given: small PyTorch models",
        "trained on seeded synthetic data (server/demo/data.py) and compiled by the",
        "`warpserve compile` pipeline in Triton's layout. Each version folder holds the",
        "chosen variant's model file, golden inputs/outputs (8 rows, outputs computed by",
        "PyTorch), `compile_report.{json,md}` and `training.json` with held-out metrics.",
        "",
    ]
    for spec in MODEL_SPECS:
        lines += _readme_section(spec, repository)
    lines += raw.readme_section()
    return "\n".join(lines) + "\n"


def _readme_section(spec: ModelSpec, repository: Path) -> list[str]:
    version = repository / spec.name / "1"
    summary = json.loads((version / "training.json").read_text("utf-8"))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in summary["held_out_metrics"].items())
    choice = json.loads((version / "compile_report.json").read_text("utf-8"))["choice"]
    return [
        f"## {spec.name}",
        "",
        spec.description,
        "",
        f"- max batch size {spec.max_batch_size}",
        f"- input: {_tensor_line(spec.input)}",
        *(f"- output: {_tensor_line(output)}{_labels_note(output)}" for output in spec.outputs),
        f"- held-out: {metrics}",
        f"- compiled: {choice['variant']}, {choice['throughput']:,.0f} rows/s at batch "
        f"{choice['batch']} ({choice['speedup_vs_eager']:.2f}x eager PyTorch where it was built)",
        "",
    ]


def _labels_note(tensor: TensorSpec) -> str:
    if not tensor.labels:
        return ""
    return f", class names in `{LABELS_FILE}` (ask for them with a class count)"


def _tensor_line(tensor: TensorSpec) -> str:
    dims: Sequence[int | str] = ("batch", *tensor.dims)
    return f"`{tensor.name}` {tensor.data_type.removeprefix('TYPE_')} [{', '.join(map(str, dims))}]"
