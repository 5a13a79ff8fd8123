"""pyproject.toml: every sub-package is listed, and the extras install one consistent set."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    dirs = project["tool"]["setuptools"]["package-dir"]
    on_disk = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([package, *relative.parts]))
    missing = on_disk - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages"


def test_console_script_points_at_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["warpserve"] == "warpserve.server.cli:main"


def _requirements(group: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(text) for text in group]
    return {canonicalize_name(r.name): r for r in parsed}


def test_one_onnx_runtime_build_per_install() -> None:
    # onnxruntime and onnxruntime-gpu install the same module: with both, whichever came
    # last wins, and uninstalling either breaks the other.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirements(project["dependencies"])
    extras = {
        name: _requirements(group) for name, group in project["optional-dependencies"].items()
    }
    builds = {"onnxruntime", "onnxruntime-gpu"}
    assert not builds & core.keys(), "ONNX Runtime belongs in the cpu or gpu extra"
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["gpu"]
    for name, group in extras.items():
        assert len(builds & group.keys()) <= 1, f"extra '{name}' names both ONNX Runtime builds"
    for name, group in extras.items():
        if name not in ("cpu", "gpu"):
            assert not builds & group.keys(), f"extra '{name}' would pair with cpu or gpu"


def test_the_gpu_extra_is_one_cuda_12_set() -> None:
    gpu = _requirements(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
            "gpu"
        ]
    )
    # The `tensorrt` metapackage depends on tensorrt-cu13 since TensorRT 10.13.
    assert "tensorrt" not in gpu and "tensorrt-cu12" in gpu
    assert "cupy-cuda12x" in gpu
    # onnxruntime-gpu on PyPI targets CUDA 12 from 1.19 to 1.26 and CUDA 13 from 1.27.
    ort = gpu["onnxruntime-gpu"].specifier
    assert "1.26.0" in ort and "1.21.0" in ort and "1.27.0" not in ort
    assert not any("13" in name for name in gpu)


def test_type_checker_sees_every_package_under_its_import_name() -> None:
    # mypy reads first-party code through .typecheck/warpserve (see pyproject.toml): each
    # mapped folder must be linked there, or its imports silently become Any again.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    links = ROOT / ".typecheck" / "warpserve"
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        if package == "warpserve":
            target = links / "__init__.py"
            assert target.resolve() == (ROOT / folder / "__init__.py").resolve()
            continue
        link = links / package.removeprefix("warpserve.")
        assert link.is_symlink(), f"link {link} to ../../{folder}"
        assert link.resolve() == (ROOT / folder).resolve()
