"""TorchScript and AOTInductor backends: loading, Triton's naming conventions, parity
with eager PyTorch in-process and served end to end through tritonclient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install '.[torch]'")

import tritonclient.grpc as grpcclient  # noqa: E402

from tests.e2e.harness import ServerProcess, start_server  # noqa: E402
from tests.server.backends import torch_models as tm  # noqa: E402
from warpserve.protos import model_config_pb2 as mc  # noqa: E402
from warpserve.server.backends import aoti, torchscript  # noqa: E402
from warpserve.server.errors import ModelLoadError  # noqa: E402
from warpserve.server.repository import config as cfg  # noqa: E402
from warpserve.server.repository import versionfolder  # noqa: E402

NO_GPU = "needs a CUDA device (CUDA streams and CUDA graphs); this machine has none"


@pytest.fixture(scope="session")
def aoti_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One AOTInductor compile for the whole session: it takes tens of seconds here."""
    path = tmp_path_factory.mktemp("aoti") / "mlp.pt2"
    return path, tm.aoti_mlp(path)


def _load(repo: Path, name: str) -> tuple[mc.ModelConfig, Path]:
    raw = cfg.read_config(repo / name)
    version = repo / name / "1"
    return cfg.complete(raw, version), version


def test_torchscript_matches_eager_and_keeps_the_batch(tmp_path: Path) -> None:
    source = tmp_path / "mlp.pt"
    module = tm.torchscript_mlp(source)
    text = tm.config("ts", "pytorch_libtorch", ["INPUT__0"], ["OUTPUT__0"])
    tm.write_model(tmp_path, "ts", text, source, "model.pt")
    config, version = _load(tmp_path, "ts")
    assert (config.backend, config.instance_group[0].kind) == (
        "pytorch",
        mc.ModelInstanceGroup.KIND_CPU,
    )
    instance = torchscript.load_instance(config, version, 0, 1)
    for n in (1, 5):
        x = tm.rows(n, seed=n)
        got = instance.execute({"INPUT__0": x})["OUTPUT__0"]
        np.testing.assert_allclose(got, tm.eager(module, x).numpy(), rtol=1e-5, atol=1e-6)
    read_only = tm.rows(2)
    read_only.flags.writeable = False  # as a request's view of gRPC bytes arrives
    assert instance.execute({"INPUT__0": read_only})["OUTPUT__0"].shape == (2, tm.CLASSES)
    instance.close()


def test_torchscript_names_follow_tritons_conventions(tmp_path: Path) -> None:
    source = tmp_path / "pair.pt"
    tm.TwoInTwoOut.build(source)
    # Inputs named like forward's arguments, listed in another order; outputs by index.
    text = tm.config("pair", "pytorch_libtorch", ["y", "x"], ["PROD__1", "SUM__0"])
    tm.write_model(tmp_path, "pair", text, source, "model.pt")
    config, version = _load(tmp_path, "pair")
    instance = torchscript.load_instance(config, version, 0, 1)
    x, y = tm.rows(3, seed=1), tm.rows(3, seed=2)
    out = instance.execute({"x": x, "y": y})
    np.testing.assert_allclose(out["SUM__0"], x + y, rtol=1e-6)
    np.testing.assert_allclose(out["PROD__1"], x * y, rtol=1e-6)


def test_a_bad_parameter_or_file_fails_the_load(tmp_path: Path) -> None:
    source = tmp_path / "mlp.pt"
    tm.torchscript_mlp(source)
    extra = 'parameters { key: "INFERENCE_MODE" value { string_value: "perhaps" } }'
    tm.write_model(
        tmp_path,
        "ts",
        tm.config("ts", "pytorch_libtorch", ["INPUT__0"], ["OUTPUT__0"], extra),
        source,
        "model.pt",
    )
    config, version = _load(tmp_path, "ts")
    with pytest.raises(ModelLoadError, match="INFERENCE_MODE='perhaps'"):
        torchscript.load_instance(config, version, 0, 1)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a TorchScript archive")
    tm.write_model(
        tmp_path,
        "bad",
        tm.config("bad", "pytorch_libtorch", ["INPUT__0"], ["OUTPUT__0"]),
        broken,
        "model.pt",
    )
    config, version = _load(tmp_path, "bad")
    with pytest.raises(ModelLoadError, match="TorchScript could not load"):
        torchscript.load_instance(config, version, 0, 1)


def test_aoti_matches_eager_over_batch_sizes(
    tmp_path: Path, aoti_package: tuple[Path, object]
) -> None:
    package, module = aoti_package
    text = tm.config("compiled", "torch_aoti", ["INPUT__0"], ["OUTPUT__0"])
    tm.write_model(tmp_path, "compiled", text, package, "model.pt2")
    config, version = _load(tmp_path, "compiled")
    instance = aoti.load_instance(config, version, 0, 1)
    # The runner is called directly (specs parsed once) when the config's tensors are the
    # program's flat inputs, and through the package's wrapper otherwise.
    loaded = torch._inductor.aoti_load_package(str(package))
    assert aoti._direct_call(loaded, 1) is not loaded
    assert aoti._direct_call(loaded, 2) is loaded
    for n in (1, 3, tm.MAX_BATCH):
        x = tm.rows(n, seed=n)
        got = instance.execute({"INPUT__0": x})["OUTPUT__0"]
        np.testing.assert_allclose(got, tm.eager(module, x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_gpu_instance_without_cuda_fails_by_name(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    source = tmp_path / "mlp.pt"
    tm.torchscript_mlp(source)
    text = tm.config("ts", "pytorch_libtorch", ["INPUT__0"], ["OUTPUT__0"])
    tm.write_model(tmp_path, "ts", text.replace("KIND_CPU", "KIND_GPU"), source, "model.pt")
    config, version = _load(tmp_path, "ts")
    with pytest.raises(ModelLoadError, match="KIND_GPU, but torch sees no CUDA device"):
        torchscript.load_instance(config, version, 0, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_graphs_replay_per_batch_size(tmp_path: Path) -> None:
    source = tmp_path / "mlp.pt"
    module = tm.torchscript_mlp(source)
    extra = 'parameters { key: "cuda_graph_batch_sizes" value { string_value: "1,4" } }'
    text = tm.config("ts", "pytorch_libtorch", ["INPUT__0"], ["OUTPUT__0"], extra)
    tm.write_model(tmp_path, "ts", text.replace("KIND_CPU", "KIND_GPU"), source, "model.pt")
    config, version = _load(tmp_path, "ts")
    instance = torchscript.load_instance(config, version, 0, 1)
    for n in (1, 4, 4, 3):  # two replays of one graph, and a size without one
        x = tm.rows(n, seed=n)
        got = instance.execute({"INPUT__0": x})["OUTPUT__0"]
        np.testing.assert_allclose(got, tm.eager(module, x).numpy(), rtol=1e-3, atol=1e-4)
    instance.close()


# --- served end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_server(
    tmp_path_factory: pytest.TempPathFactory, aoti_package: tuple[Path, object]
) -> Iterator[tuple[ServerProcess, dict[str, object]]]:
    repo = tmp_path_factory.mktemp("torch-repo")
    scripted = repo / "mlp.pt"
    eager_modules = {"ts_mlp": tm.torchscript_mlp(scripted), "aoti_mlp": aoti_package[1]}
    golden_x = tm.rows(4, seed=7)
    for name, platform, source, filename in (
        ("ts_mlp", "pytorch_libtorch", scripted, "model.pt"),
        ("aoti_mlp", "torch_aoti", aoti_package[0], "model.pt2"),
    ):
        expected = tm.eager(eager_modules[name], golden_x).numpy()
        golden = versionfolder.Golden({"INPUT__0": golden_x}, {"OUTPUT__0": expected})
        (repo / name).mkdir()
        (repo / name / "config.pbtxt").write_text(
            tm.config(name, platform, ["INPUT__0"], ["OUTPUT__0"])
        )
        versionfolder.write_version(repo / name, 1, source, filename, golden=golden)
    server = start_server(repo, log_dir=tmp_path_factory.mktemp("torch-logs"))
    yield server, eager_modules
    server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["ts_mlp", "aoti_mlp"])
def test_served_outputs_equal_eager_pytorch(
    torch_server: tuple[ServerProcess, dict[str, object]], name: str
) -> None:
    server, modules = torch_server
    client = grpcclient.InferenceServerClient(server.url)
    assert client.is_model_ready(name), server.log()
    for n in (1, 6):
        x = tm.rows(n, seed=10 + n)
        tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer(name, [tensor]).as_numpy("OUTPUT__0")
        np.testing.assert_allclose(got, tm.eager(modules[name], x).numpy(), rtol=1e-4, atol=1e-5)
    assert f"model '{name}' version 1: executing on worker threads" in server.log()
    metadata = client.get_model_config(name).config
    assert metadata.platform == {"ts_mlp": "pytorch_libtorch", "aoti_mlp": "torch_aoti"}[name]
