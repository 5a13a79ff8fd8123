"""The ONNX Runtime backend without ONNX Runtime installed (neither the cpu nor the gpu
extra): the server still imports and lists the format, and an ONNX model fails naming
what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HIDE_ORT = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys

    class HideOnnxRuntime(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime" or name.startswith("onnxruntime."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, HideOnnxRuntime())
    real_find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        try:
            return real_find_spec(name, package)
        except ModuleNotFoundError:
            return None

    importlib.util.find_spec = find_spec
    """
)

CHECK = textwrap.dedent(
    """
    from warpserve.server.backends import spec
    from warpserve.server.errors import ModelLoadError

    ort_spec = spec.by_platform("onnxruntime_onnx")
    assert ort_spec is not None and not ort_spec.gpu_available()
    assert ort_spec.missing_packages() == ["onnxruntime"], ort_spec.missing_packages()
    try:
        ort_spec.check_toolchain("m")
    except ModelLoadError as exc:
        print(exc)
    """
)


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )


def test_without_onnxruntime_the_backend_imports_and_names_the_extras() -> None:
    result = run(HIDE_ORT + CHECK)
    assert result.returncode == 0, result.stderr
    assert "needs the Python package(s) onnxruntime" in result.stdout
    assert "warpserve[cpu]" in result.stdout and "warpserve[gpu]" in result.stdout


def test_the_hiding_works() -> None:
    # Positive control: the same finder makes a plain import of onnxruntime fail.
    result = run(HIDE_ORT + "import onnxruntime")
    assert result.returncode != 0 and "No module named 'onnxruntime'" in result.stderr
