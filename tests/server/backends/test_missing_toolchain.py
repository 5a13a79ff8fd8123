"""A model whose format's packages are missing fails with them named; the rest serve.

TensorRT is missing on every CPU machine; where torch is missing too (CI's Python 3.12
run), the TorchScript and AOTInductor models join in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.harness import answers, start_server
from tests.models import affine_reference, write_affine
from warpserve.server.backends import spec as formats

MISSING = [s for s in formats.specs() if s.missing_packages()]


def _write_format_model(repo: Path, spec: formats.BackendSpec) -> str:
    name = f"needs_{spec.backend}"
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    (folder / spec.default_filename).write_bytes(b"never read: the toolchain is missing")
    (repo / name / "config.pbtxt").write_text(
        f'platform: "{spec.platform}"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]\n'
    )
    return name


def _status(url: str, name: str) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "warpserve.server.cli",
            "models",
            "-u",
            url,
            "status",
            name,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (model,) = json.loads(done.stdout)["models"]
    return model["versions"][0]


@pytest.mark.e2e
@pytest.mark.skipif(not MISSING, reason="every format's packages are installed here")
def test_models_without_their_toolchain_fail_by_name_and_others_serve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_affine(repo)
    names = {_write_format_model(repo, spec): spec for spec in MISSING}
    # Not ready as a whole (a model failed, Triton's strict readiness), but serving.
    server = start_server(repo, log_dir=tmp_path, wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        while not answers(server.url, timeout=1.0):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        client = grpcclient.InferenceServerClient(server.url)
        index = {m.name: m for m in client.get_model_repository_index().models}
        log = server.log()
        for name, spec in names.items():
            missing = spec.missing_packages()
            assert index[name].state == "FAILED", index[name]
            assert all(package in index[name].reason for package in missing), index[name].reason
            version = _status(server.url, name)
            assert version["state"] == "FAILED"
            assert all(package in str(version["reason"]) for package in missing)
            assert f"platform {spec.platform} needs the Python package(s)" in log
        # The model with its toolchain serves as if nothing happened.
        assert index["affine"].state == "READY"
        x = np.ones((2, 4), np.float32)
        tensor = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("affine", [tensor]).as_numpy("OUTPUT0")
        np.testing.assert_allclose(got, affine_reference(x, scale=1.0), rtol=1e-5)
    finally:
        server.stop()
