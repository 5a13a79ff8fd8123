"""Where the trained model comes from: a ``.pt2`` program, TorchScript, a factory, MLflow."""

from __future__ import annotations

import importlib
import inspect
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from warpserve.compile.errors import UsageError
from warpserve.compile.specs import TensorSpec
from warpserve.server import dtypes


@dataclass
class ModelSource:
    """The eager module every variant is checked against, and how it was obtained."""

    module: nn.Module
    kind: str  # "torch.export", "torchscript", "factory", "mlflow", "module"
    description: str
    program: torch.export.ExportedProgram | None = None  # given, for a .pt2
    inputs: list[TensorSpec] | None = None  # declared with the model (an MLflow signature)

    @property
    def scripted(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)

    def argument_names(self) -> list[str]:
        """The forward() parameter names (the program's user inputs for a .pt2)."""
        if self.program is not None:
            return list(self.program.graph_signature.user_inputs)
        forward = self.module.forward
        try:
            parameters = inspect.signature(forward).parameters
        except (TypeError, ValueError):
            return []
        return [p for p in parameters if p != "self"]


def load_source(model: str, state_dict: Path | None = None) -> ModelSource:
    """Load MODEL as given on the command line; raises UsageError naming what is wrong."""
    if ":" in model and not Path(model).exists():
        return _from_factory(model, state_dict)
    path = Path(model)
    if state_dict is not None:
        raise UsageError("--state-dict applies to a package.module:factory MODEL only")
    if not path.exists():
        raise UsageError(f"MODEL {model!r}: no such file or folder, and not package.module:factory")
    if path.is_dir():
        return _from_mlflow(path)
    if _is_export_archive(path):
        return _from_program(path)
    return _from_torchscript(path)


def _is_export_archive(path: Path) -> bool:
    # torch.export.save writes a zip whose members include serialized_exported_program.json
    # (older) or models/*.json (newer); TorchScript zips hold code/ and data.pkl instead.
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any("exported_program" in n or "/models/" in n for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _from_program(path: Path) -> ModelSource:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UsageError(
            f"MODEL {path}: not a torch.export program that torch.export.load can read "
            f"({type(exc).__name__}: {_first_line(exc)}); save one with torch.export.save"
        ) from exc
    _require_dynamic_batch(program, path)
    return ModelSource(program.module(), "torch.export", f"torch.export program {path}", program)


def _require_dynamic_batch(program: torch.export.ExportedProgram, path: Path) -> None:
    # A program traced with a fixed batch size guards on it: every other batch fails.
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if node.name in names and value is not None and isinstance(value.shape[0], int):
            raise UsageError(
                f"MODEL {path}: input {node.name!r} has a fixed batch size of "
                f"{value.shape[0]}; export it with dynamic_shapes={{{node.name!r}: {{0: "
                "torch.export.Dim('batch')}} and save it again"
            )


def _from_torchscript(path: Path) -> ModelSource:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UsageError(
            f"MODEL {path}: neither a torch.export program (.pt2) nor a TorchScript file "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return ModelSource(module.eval(), "torchscript", f"TorchScript {path}")


def _from_factory(target: str, state_dict: Path | None) -> ModelSource:
    module_name, _, attribute = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"MODEL {target!r}: cannot import {attribute!r} from {module_name!r} ({exc}); "
            "is the package on PYTHONPATH?"
        ) from exc
    try:
        module = factory()
    except Exception as exc:
        raise UsageError(
            f"MODEL {target!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"MODEL {target!r}: the factory returned {type(module).__name__}, expected a "
            "torch.nn.Module"
        )
    if state_dict is not None:
        _load_weights(module, state_dict)
    return ModelSource(module.eval(), "factory", f"factory {target}")


def _load_weights(module: nn.Module, path: Path) -> None:
    try:
        weights = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"--state-dict {path}: not readable by torch.load ({exc})") from exc
    if isinstance(weights, dict) and "state_dict" in weights:
        weights = weights["state_dict"]
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"--state-dict {path}: does not fit the module: {_first_line(exc)}"
        ) from exc


def _from_mlflow(path: Path) -> ModelSource:
    """An MLflow model folder of the pytorch flavour, in either of its serialisations.

    "pt2" (MLflow 3's default) holds a torch.export program: it is read as a .pt2 is, so
    no second export is needed and the inputs come from the program. "pickle" holds the
    pickled module; its inputs come from the model's signature where it has one.
    """
    if not (path / "MLmodel").is_file():
        raise UsageError(
            f"MODEL {path}: a folder, but not an MLflow model (no MLmodel file); pass a .pt2, "
            "a TorchScript file or package.module:factory"
        )
    try:
        import mlflow.pytorch
        from mlflow.models import Model
    except ImportError as exc:
        raise UsageError(
            f"MODEL {path} is an MLflow model; reading it needs mlflow (pip install "
            f"'warpserve[mlflow]'): {exc}"
        ) from exc
    description = f"MLflow model {path}"
    try:
        model = Model.load(str(path))
    except Exception as exc:
        raise UsageError(f"MODEL {path}: MLflow cannot read its MLmodel file ({exc})") from exc
    flavour = model.flavors.get("pytorch")
    if flavour is None:
        raise UsageError(
            f"MODEL {path}: an MLflow model without the pytorch flavour (it has "
            f"{', '.join(sorted(model.flavors)) or 'none'}); log it with mlflow.pytorch"
        )
    program = path / str(flavour.get("model_data", "data")) / "model.pt2"
    if program.is_file():
        source = _from_program(program)
        source.kind, source.description = "mlflow", f"{description} (torch.export program)"
        return source
    try:
        module = mlflow.pytorch.load_model(str(path), map_location="cpu")
    except Exception as exc:
        raise UsageError(
            f"MODEL {path}: mlflow could not load it as the pytorch flavour ({exc})"
        ) from exc
    source = ModelSource(module.eval(), "mlflow", description)
    source.inputs = _signature_inputs(model.signature, source.argument_names())
    return source


def _signature_inputs(signature: object, arguments: list[str]) -> list[TensorSpec] | None:
    """Input specs from an MLflow signature of tensors [-1, fixed dims...]; None where it
    says less (no signature, columns, another batch layout): --input is then needed."""
    from mlflow.types.schema import TensorSpec as MlflowTensor

    schema = getattr(signature, "inputs", None)
    tensors = list(getattr(schema, "inputs", None) or [])
    if not tensors or not all(isinstance(t, MlflowTensor) for t in tensors):
        return None
    if len(tensors) != len(arguments) and any(t.name is None for t in tensors):
        return None
    specs = []
    for i, tensor in enumerate(tensors):
        shape = tuple(tensor.shape)
        if not shape or shape[0] != -1 or any(d < 0 for d in shape[1:]):
            return None
        try:
            wire = dtypes.from_numpy(tensor.type).wire
        except TypeError:
            return None
        specs.append(TensorSpec(tensor.name or arguments[i], tuple(shape[1:]), wire))
    return specs


def specs_from_program(program: torch.export.ExportedProgram) -> list[TensorSpec]:
    """Input specs from a program's placeholders (their example shapes, batch dropped)."""
    names = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in names:
            continue
        value = node.meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise UsageError(f"the program's input {node.name!r} is not a tensor; pass --input")
        dims = tuple(int(d) if isinstance(d, int) else -1 for d in value.shape[1:])
        if any(d < 0 for d in dims):
            raise UsageError(
                f"the program's input {node.name!r} has dynamic dims beyond the batch; pass "
                "--input with concrete sizes"
            )
        specs.append(TensorSpec(node.name, dims, torch_wire(value.dtype)))
    return specs


def torch_wire(dtype: torch.dtype) -> str:
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return dtypes.from_numpy(numpy_dtype).wire


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def import_path_hint() -> None:
    # A factory in the current folder should import as it would with `python -m`.
    if "" not in sys.path:
        sys.path.insert(0, "")
