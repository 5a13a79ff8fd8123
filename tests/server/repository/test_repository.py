"""Triton repository layout, config parsing and completion, version policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import write_affine
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import InvalidInput, ModelLoadError, ModelNotFound
from warpserve.server.repository import config as cfg
from warpserve.server.repository.repository import INCOMPLETE_MARKER, ModelRepository


def test_missing_config_is_completed_from_the_onnx_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfg, "_gpu_available", lambda platform: False)
    write_affine(tmp_path, config=False)
    repo = ModelRepository(tmp_path)
    raw = repo.config("affine")
    done = cfg.complete(raw, repo.versions_to_serve("affine", raw)[0].path)
    assert done.platform == "onnxruntime_onnx"
    assert done.max_batch_size == cfg.DEFAULT_MAX_BATCH_SIZE
    assert done.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in done.input] == [
        ("INPUT0", mc.TYPE_FP32, [4])
    ]
    assert [t.name for t in done.output] == ["OUTPUT0"]
    # Triton's default for ONNX Runtime on the CPU: two instances.
    (group,) = done.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, 2)


def test_instance_groups_are_completed_as_triton_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def completed(groups: str, gpu: bool) -> list[tuple[int, int]]:
        monkeypatch.setattr(cfg, "_gpu_available", lambda platform: gpu)
        write_affine(tmp_path, extra=groups, instances=3)
        config = ModelRepository(tmp_path).config("affine")
        del config.instance_group[0]  # write_affine's own group
        done = cfg.complete(config, tmp_path / "affine" / "1")
        return [(g.kind, g.count) for g in done.instance_group]

    cpu, gpu = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
    auto = "instance_group [{ kind: KIND_AUTO }]"
    assert completed(auto, gpu=False) == [(cpu, 2)]
    assert completed(auto, gpu=True) == [(gpu, 1)]  # as many as GPUs listed: one here
    assert completed("", gpu=True) == [(gpu, 1)]  # no group at all: KIND_AUTO
    assert completed("instance_group [{ kind: KIND_CPU }]", gpu=True) == [(cpu, 2)]
    assert completed("instance_group [{ count: 3 kind: KIND_CPU }]", gpu=False) == [(cpu, 3)]
    # Other backends keep Triton's plain default of one.
    other = mc.ModelConfig(platform="pytorch_libtorch")
    assert cfg.default_instance_count(other, mc.ModelInstanceGroup(kind=cpu)) == 1


def test_bad_config_and_name_mismatch(tmp_path: Path) -> None:
    model = write_affine(tmp_path)
    (model / "config.pbtxt").write_text("max_batch_size: [")
    with pytest.raises(ModelLoadError, match="not a valid ModelConfig"):
        ModelRepository(tmp_path).config("affine")
    (model / "config.pbtxt").write_text('name: "other"')
    with pytest.raises(ModelLoadError, match="differs from its folder"):
        ModelRepository(tmp_path).config("affine")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "a\\b", "/etc"])
def test_model_names_cannot_leave_the_repository(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="not valid"):
        ModelRepository(tmp_path).model_dir(name)


def test_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not in the repository"):
        ModelRepository(tmp_path).model_dir("nope")


def test_version_policies(tmp_path: Path) -> None:
    write_affine(tmp_path, versions=(1, 2, 3), golden=False)
    repo = ModelRepository(tmp_path)
    config = repo.config("affine")
    assert [v.version for v in repo.versions_to_serve("affine", config)] == [3]
    config.version_policy.latest.num_versions = 2
    assert [v.version for v in repo.versions_to_serve("affine", config)] == [2, 3]
    config.version_policy.all.SetInParent()
    assert [v.version for v in repo.versions_to_serve("affine", config)] == [1, 2, 3]
    config.version_policy.specific.versions.extend([1, 3])
    assert [v.version for v in repo.versions_to_serve("affine", config)] == [1, 3]


def test_incomplete_versions_are_not_served(tmp_path: Path) -> None:
    model = write_affine(tmp_path, versions=(1, 2, 3), golden=False)
    (model / "2" / INCOMPLETE_MARKER).touch()
    (model / "3" / "model.onnx").unlink()
    (model / "4.partial").mkdir()
    repo = ModelRepository(tmp_path)
    config = repo.config("affine")
    assert [v.version for v in repo.version_folders("affine", config)] == [1]
    assert [p.name for p in repo.incomplete_folders("affine", config)] == ["2", "3"]


def test_validation_rejects_bad_preferred_sizes(tmp_path: Path) -> None:
    write_affine(tmp_path, batching="preferred_batch_size: [ 16 ]")
    repo = ModelRepository(tmp_path)
    raw = repo.config("affine")
    with pytest.raises(ModelLoadError, match="preferred_batch_size"):
        cfg.complete(raw, repo.versions_to_serve("affine", raw)[0].path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "max_batch_sise: 4",
            "unknown field 'max_batch_sise' in ModelConfig; did you mean 'max_batch_size'?",
        ),
        (
            'input [{ name: "x" dtype: TYPE_FP32 }]',
            "unknown field 'dtype' in ModelInput; did you mean 'data_type'?",
        ),
        (
            "dynamic_batching { zzz: 1 }",
            "unknown field 'zzz' in ModelDynamicBatching; ModelDynamicBatching has: "
            "preferred_batch_size",
        ),
        ("instance_group [{ kind: KIND_FOO }]", "not a valid ModelConfig in text format"),
    ],
)
def test_config_typos_fail_the_load_naming_field_and_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    write_affine(tmp_path, config=False)
    path = tmp_path / "affine" / "config.pbtxt"
    path.write_text(f'name: "affine"\n{text}\n')
    with pytest.raises(ModelLoadError) as caught:
        ModelRepository(tmp_path).config("affine")
    assert str(caught.value).startswith(f"{path}:2:")
    assert expected in str(caught.value)


def test_every_triton_field_parses(tmp_path: Path) -> None:
    # Positive control for the strict parser: Triton's fields that warpserve does not act
    # on still parse, and the scheduling choices it cannot honour fail with their name.
    text = """
    name: "affine"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] is_non_linear_format_io: false }]
    output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
    optimization { cuda { graphs: true graph_spec [{ batch_size: 4 }] } }
    instance_group [{ kind: KIND_CPU secondary_devices [{ kind: KIND_NVDLA device_id: 0 }] }]
    model_operations { op_library_filename: "x.so" }
    model_repository_agents { agents [{ name: "checksum" }] }
    model_metrics { metric_control [{ metric_identifier { family: "f" } }] }
    """
    write_affine(tmp_path, config=False)
    (tmp_path / "affine" / "config.pbtxt").write_text(text)
    raw = ModelRepository(tmp_path).config("affine")
    done = cfg.complete(raw, tmp_path / "affine" / "1")
    assert done.optimization.cuda.graphs
    sequence = text + "sequence_batching { max_sequence_idle_microseconds: 5 }"
    (tmp_path / "affine" / "config.pbtxt").write_text(sequence)
    raw = ModelRepository(tmp_path).config("affine")
    with pytest.raises(ModelLoadError, match=r"sequence batching \(stateful models\)"):
        cfg.complete(raw, tmp_path / "affine" / "1")
