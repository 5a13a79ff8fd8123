"""Build, cache and find the built-in demo model repository.

`warpserve serve` without a repository serves three small models trained here on synthetic
data and exported to ONNX in Triton's layout. The build takes seconds, so it runs on first
use and is cached under a name that changes whenever the demo's code changes.

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

from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.repository import parameters, versionfolder

if TYPE_CHECKING:
    from .train import Report, TrainedModel

Progress = Callable[[str, float], None]
MODEL_NAMES = ("image_classifier", "fraud_scorer", "recommender")
GOLDEN_ATOL = "1e-4"
GOLDEN_RTOL = "1e-4"
# Sources whose change must invalidate a cached build: they decide the data, the models and
# the files written.
_SOURCES = ("data.py", "models.py", "train.py", "build.py")
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
        "distance, velocity, ...; standardisation is inside the graph). ~5 % are fraud.",
        0.25,
    ),
    ModelSpec(
        "recommender",
        64,
        TensorSpec("USER_FEATURES", "TYPE_FP32", (16,)),
        (TensorSpec("ITEM_IDS", "TYPE_INT64", (10,)), TensorSpec("SCORES", "TYPE_FP32", (10,))),
        "Two-tower recommender: an MLP user tower against a 1000-item embedding table; "
        "torch.topk inside the graph returns the 10 best item ids and their scores.",
        0.20,
    ),
)


# --- public API -----------------------------------------------------------------------------


def build_demo_repository(target: Path, progress: Progress | None = None) -> Path:
    """Train the three demo models and write them to `target` in Triton's repository layout.

    Each model gets config.pbtxt, 1/model.onnx, 1/golden/{inputs,outputs}.npz (outputs from
    PyTorch) and 1/training.json; `target` gets a README.md. Raises DemoBuildError when torch
    is missing or an exported model does not reproduce its golden outputs.
    """
    report = progress or (lambda message, fraction: None)
    train = _import_training()
    target.mkdir(parents=True, exist_ok=True)
    trainers = {
        "image_classifier": train.train_image_classifier,
        "fraud_scorer": train.train_fraud_scorer,
        "recommender": train.train_recommender,
    }
    done = 0.0
    with _torch_threads():
        for spec in MODEL_SPECS:
            started = time.perf_counter()
            stage = _stage_reporter(report, spec.name, done, spec.train_weight * 0.85)
            trained = trainers[spec.name](stage)
            report(f"exporting {spec.name} to ONNX", done + spec.train_weight * 0.85)
            _write_model(target / spec.name, spec, trained, time.perf_counter() - started)
            done += spec.train_weight
    (target / "README.md").write_text(_readme(target), encoding="utf-8")
    report("demo repository ready", 1.0)
    return target


def default_demo_path() -> Path:
    """Where the cached demo repository lives: `$WARPSERVE_CACHE_DIR` or ~/.cache/warpserve."""
    root = os.environ.get("WARPSERVE_CACHE_DIR") or Path.home() / ".cache" / "warpserve"
    return Path(root) / f"demo-repository-{demo_version()}"


def demo_version() -> str:
    """A digest of the demo's source files, so that editing them triggers a rebuild."""
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
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
    """True when every demo model has its config and ONNX file."""
    return all(
        (repository / name / "config.pbtxt").is_file()
        and (repository / name / "1" / "model.onnx").is_file()
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


def _write_model(folder: Path, spec: ModelSpec, trained: TrainedModel, seconds: float) -> None:
    from .train import ONNX_OPSET, export_onnx

    output_names = [output.name for output in spec.outputs]
    golden = versionfolder.Golden(
        {spec.input.name: trained.golden_inputs},
        dict(zip(output_names, trained.golden_outputs(), strict=True)),
    )
    summary = {
        "model": spec.name,
        "held_out_metrics": trained.metrics,
        "training": trained.details,
        "train_seconds": round(seconds, 2),
        "exporter": f"torch.onnx.export(dynamo=True), opset {ONNX_OPSET}",
        "golden": {"rows": len(trained.golden_inputs), "computed_by": "pytorch"},
    }
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "model.onnx"
        export_onnx(trained, exported, spec.input.name, output_names)
        _check_with_onnxruntime(exported, golden, spec.name)
        versionfolder.write_version(
            folder,
            1,
            exported,
            "model.onnx",
            golden=golden,
            reports={"training.json": json.dumps(summary, indent=2) + "\n"},
        )
    for output in spec.outputs:
        if output.labels:
            (folder / LABELS_FILE).write_text("\n".join(output.labels) + "\n", "utf-8")
    (folder / "config.pbtxt").write_text(model_config_text(spec), encoding="utf-8")


def _check_with_onnxruntime(model_path: Path, golden: versionfolder.Golden, name: str) -> None:
    # A cache entry is reused forever, so refuse to publish an export that drifted from
    # PyTorch rather than let the server's golden check fail on every start.
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    actual = dict(
        zip(golden.outputs, session.run(list(golden.outputs), golden.inputs), strict=True)
    )
    result = versionfolder.compare(actual, golden.outputs, float(GOLDEN_ATOL), float(GOLDEN_RTOL))
    if not result.ok:
        raise DemoBuildError(
            f"{name}: ONNX Runtime against PyTorch: {'; '.join(result.failures())}; the "
            "export is wrong, please report it with your torch and onnxruntime versions"
        )


def model_config_text(spec: ModelSpec) -> str:
    """The model's config.pbtxt, built as a ModelConfig message so it always parses."""
    config = mc.ModelConfig(
        name=spec.name, platform="onnxruntime_onnx", max_batch_size=spec.max_batch_size
    )
    config.input.append(
        mc.ModelInput(
            name=spec.input.name,
            data_type=mc.DataType.Value(spec.input.data_type),
            dims=spec.input.dims,
        )
    )
    for output in spec.outputs:
        config.output.append(
            mc.ModelOutput(
                name=output.name,
                data_type=mc.DataType.Value(output.data_type),
                dims=output.dims,
                label_filename=LABELS_FILE if output.labels else "",
            )
        )
    # How long a request may be held for a batch: in warpserve's eager batching only a
    # tiny model served inline on a saturated loop waits (see batching/loopload.py);
    # 2 ms gathered the most requests per run there before latency grew.
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.append(
        mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    )
    config.parameters[parameters.GOLDEN_ATOL.key].string_value = GOLDEN_ATOL
    config.parameters[parameters.GOLDEN_RTOL.key].string_value = GOLDEN_RTOL
    return text_format.MessageToString(config)


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
        "Built by `warpserve serve` when no repository is given: three small PyTorch models",
        "trained on seeded synthetic data (server/demo/data.py) and exported to ONNX in",
        "Triton's layout. Each version folder holds `model.onnx`, golden inputs/outputs",
        "(8 rows, outputs computed by PyTorch) and `training.json` with held-out metrics.",
        "",
    ]
    for spec in MODEL_SPECS:
        lines += _readme_section(spec, repository)
    return "\n".join(lines) + "\n"


def _readme_section(spec: ModelSpec, repository: Path) -> list[str]:
    summary = json.loads((repository / spec.name / "1" / "training.json").read_text("utf-8"))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in summary["held_out_metrics"].items())
    return [
        f"## {spec.name}",
        "",
        spec.description,
        "",
        f"- max batch size {spec.max_batch_size}",
        f"- input: {_tensor_line(spec.input)}",
        *(f"- output: {_tensor_line(output)}{_labels_note(output)}" for output in spec.outputs),
        f"- held-out: {metrics}",
        "",
    ]


def _labels_note(tensor: TensorSpec) -> str:
    if not tensor.labels:
        return ""
    return f", class names in `{LABELS_FILE}` (ask for them with a class count)"


def _tensor_line(tensor: TensorSpec) -> str:
    dims: Sequence[int | str] = ("batch", *tensor.dims)
    return f"`{tensor.name}` {tensor.data_type.removeprefix('TYPE_')} [{', '.join(map(str, dims))}]"
