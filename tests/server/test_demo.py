"""The built-in demo repository: layout, configs, golden parity, quality and caching."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

# torch is an optional extra; without it the demo cannot be trained, so nothing here runs.
pytest.importorskip("torch")

import torch

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import demo as demo_package
from warpserve.server.demo import build
from warpserve.server.demo.build import (
    MODEL_SPECS,
    DemoBuildError,
    ModelSpec,
    StderrProgress,
    build_demo_repository,
    default_demo_path,
    demo_version,
    ensure_demo_repository,
)

SPECS = {spec.name: spec for spec in MODEL_SPECS}
NAMES = list(SPECS)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("demo"))


def _config(repository: Path, name: str) -> mc.ModelConfig:
    text = (repository / name / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, mc.ModelConfig())


def _session(repository: Path, name: str) -> ort.InferenceSession:
    path = repository / name / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _golden(repository: Path, name: str, which: str) -> dict[str, np.ndarray]:
    with np.load(repository / name / "1" / "golden" / f"{which}.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _metrics(repository: Path, name: str) -> dict[str, float]:
    summary = json.loads((repository / name / "1" / "training.json").read_text("utf-8"))
    return summary["held_out_metrics"]


def _run(repository: Path, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    spec = SPECS[name]
    names = [output.name for output in spec.outputs]
    outputs = _session(repository, name).run(names, {spec.input.name: rows})
    return dict(zip(names, outputs, strict=True))


# --- layout and configs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_model_has_triton_layout(repository: Path, name: str) -> None:
    version = repository / name / "1"
    files = (
        "model.onnx",
        "golden/inputs.npz",
        "golden/outputs.npz",
        "training.json",
        "compile_report.json",
        "compile_report.md",
    )
    for relative in files:
        assert (version / relative).is_file(), f"{name}: missing 1/{relative}"
    assert (repository / name / "config.pbtxt").is_file()
    assert name in (repository / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_config_parses_and_matches_spec(repository: Path, name: str) -> None:
    config, spec = _config(repository, name), SPECS[name]
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == spec.max_batch_size > 0
    assert [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in config.input] == [
        (spec.input.name, spec.input.data_type, spec.input.dims)
    ]
    assert [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in config.output] == [
        (t.name, t.data_type, t.dims) for t in spec.outputs
    ]
    # Batching settings come from the curve compile measured.
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert all(1 < b <= spec.max_batch_size for b in config.dynamic_batching.preferred_batch_size)
    assert [g.count for g in config.instance_group] in ([1], [2])
    assert float(config.parameters["golden_atol"].string_value) > 0
    assert float(config.parameters["golden_rtol"].string_value) > 0


def test_image_classifier_ships_its_class_names(repository: Path) -> None:
    (probs,) = _config(repository, "image_classifier").output
    assert probs.label_filename, "PROBS has no label_filename"
    names = (repository / "image_classifier" / probs.label_filename).read_text(encoding="utf-8")
    assert names.splitlines() == ["cat", "dog"]  # class 0 and class 1 of the training data


@pytest.mark.parametrize("name", NAMES)
def test_onnx_graph_matches_config_with_symbolic_batch(repository: Path, name: str) -> None:
    model = onnx.load(str(repository / name / "1" / "model.onnx"))
    onnx.checker.check_model(model)
    spec: ModelSpec = SPECS[name]
    graph_tensors = [(t.name, t.type.tensor_type.shape.dim) for t in model.graph.input] + [
        (t.name, t.type.tensor_type.shape.dim) for t in model.graph.output
    ]
    expected = [spec.input, *spec.outputs]
    assert [n for n, _ in graph_tensors] == [t.name for t in expected]
    for (tensor_name, dims), tensor in zip(graph_tensors, expected, strict=True):
        assert dims[0].dim_param, f"{tensor_name}: batch dimension is fixed, expected symbolic"
        assert tuple(d.dim_value for d in dims[1:]) == tensor.dims


# --- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_reproduces_pytorch_golden_outputs(repository: Path, name: str) -> None:
    config = _config(repository, name)
    atol = float(config.parameters["golden_atol"].string_value)
    rtol = float(config.parameters["golden_rtol"].string_value)
    inputs, expected = _golden(repository, name, "inputs"), _golden(repository, name, "outputs")
    assert list(inputs) == [SPECS[name].input.name]
    assert all(len(rows) == 8 for rows in (*inputs.values(), *expected.values()))
    actual = _session(repository, name).run(list(expected), inputs)
    for (output, want), got in zip(expected.items(), actual, strict=True):
        assert got.dtype == want.dtype, output
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=output)
        else:
            np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=output)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_batch_dimension_is_dynamic(repository: Path, name: str, batch: int) -> None:
    rows = _golden(repository, name, "inputs")[SPECS[name].input.name][:batch]
    expected = _golden(repository, name, "outputs")
    for output, got in _run(repository, name, rows).items():
        assert got.shape == (batch, *expected[output].shape[1:]), output
        # Rows are independent: a row's answer must not depend on what it is batched with.
        np.testing.assert_allclose(got, expected[output][:batch], atol=1e-4, rtol=1e-4)


def test_recommender_returns_valid_distinct_items_ranked_by_score(repository: Path) -> None:
    users = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    out = _run(repository, "recommender", users)
    ids, scores = out["ITEM_IDS"], out["SCORES"]
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    n_items = json.loads((repository / "recommender/1/training.json").read_text())["training"][
        "items"
    ]
    assert ((ids >= 0) & (ids < n_items)).all()
    assert all(len(set(row.tolist())) == 10 for row in ids)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_popularity_fallback_ranks_the_same_popular_items_for_every_user(
    repository: Path,
) -> None:
    users = np.random.default_rng(2).normal(size=(7, 16)).astype(np.float32)
    out = _run(repository, build.POPULARITY, users)
    ids, scores = out["ITEM_IDS"], out["SCORES"]
    assert ids.dtype == np.int64 and (ids == ids[0]).all() and (scores == scores[0]).all()
    assert len(set(ids[0].tolist())) == 10 and (np.diff(scores[0]) <= 0).all()
    assert 0 < scores[0, -1] <= scores[0, 0] <= 1  # shares of training users
    recommender = _metrics(repository, "recommender")["popularity_recall_at_10"]
    assert _metrics(repository, build.POPULARITY)["recall_at_10"] == recommender


def test_recommender_names_its_fallback_and_sheds_priority_2(repository: Path) -> None:
    config = _config(repository, "recommender")
    assert config.parameters["fallback_model"].string_value == build.POPULARITY
    assert config.parameters["shed_queue_size"].string_value == "0,32"
    assert config.dynamic_batching.priority_levels == 2
    assert config.dynamic_batching.default_priority_level == 1


def test_fraud_scorer_ships_a_drift_reference_of_its_training_rows(repository: Path) -> None:
    from warpserve.server.demo.data import TRANSACTION_FEATURES
    from warpserve.server.drift.reference import read_reference

    reference = read_reference(repository / "fraud_scorer" / "1")
    assert reference is not None and reference.rows == 20000
    transactions = reference.inputs["TRANSACTION"]
    assert transactions.features == TRANSACTION_FEATURES
    assert (transactions.counts.sum(axis=1) == 20000).all()
    assert read_reference(repository / "recommender" / "1") is None


def test_classifier_and_fraud_outputs_are_probabilities(repository: Path) -> None:
    probs = _run(
        repository, "image_classifier", _golden(repository, "image_classifier", "inputs")["IMAGE"]
    )
    np.testing.assert_allclose(probs["PROBS"].sum(axis=1), 1.0, atol=1e-5)
    rows = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)
    fraud = _run(repository, "fraud_scorer", rows)["FRAUD_PROBABILITY"]
    assert ((fraud >= 0) & (fraud <= 1)).all()


# --- the models learned something -----------------------------------------------------------


def test_image_classifier_accuracy(repository: Path) -> None:
    assert _metrics(repository, "image_classifier")["accuracy"] > 0.9


def test_fraud_scorer_auc(repository: Path) -> None:
    metrics = _metrics(repository, "fraud_scorer")
    assert metrics["auc"] > 0.85
    assert 0.02 < metrics["positive_rate"] < 0.08


def test_recommender_recall_beats_random_and_popularity(repository: Path) -> None:
    metrics = _metrics(repository, "recommender")
    assert metrics["recall_at_10"] > 10 * metrics["random_recall_at_10"]
    assert metrics["recall_at_10"] > 2 * metrics["popularity_recall_at_10"]


def test_rebuild_gives_same_golden_outputs(repository: Path) -> None:
    from warpserve.server.demo import train

    # Same thread setting as the build: results must then match bit for bit.
    with build._torch_threads():
        retrained = train.train_fraud_scorer(lambda fraction: None).golden_outputs()[0]
    golden = _golden(repository, "fraud_scorer", "outputs")["FRAUD_PROBABILITY"]
    np.testing.assert_array_equal(retrained, golden)


# --- cache ----------------------------------------------------------------------------------


class _FakeBuilder:
    """Copies the module's repository instead of training, and counts the builds."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.calls = 0

    def __call__(self, target: Path, progress: object = None) -> Path:
        self.calls += 1
        shutil.copytree(self.source, target, dirs_exist_ok=True)
        return target


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WARPSERVE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_default_path_is_versioned_under_cache_dir(cache_dir: Path) -> None:
    path = default_demo_path()
    assert path.parent == cache_dir
    assert demo_version() in path.name


def test_ensure_builds_once_then_reuses(
    repository: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = _FakeBuilder(repository)
    monkeypatch.setattr(build, "build_demo_repository", builder)
    first = ensure_demo_repository(progress=False)
    mtime = (first / "fraud_scorer" / "config.pbtxt").stat().st_mtime_ns
    second = ensure_demo_repository(progress=False)
    assert first == second == default_demo_path()
    assert builder.calls == 1
    assert (second / "fraud_scorer" / "config.pbtxt").stat().st_mtime_ns == mtime
    assert [p.name for p in cache_dir.iterdir()] == [first.name], "staging folder left behind"


def test_crashed_build_leaves_no_cache_entry(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(target: Path, progress: object = None) -> Path:
        (target / "image_classifier").mkdir(parents=True)
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(build, "build_demo_repository", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        ensure_demo_repository(progress=False)
    assert list(cache_dir.iterdir()) == []


def test_losing_concurrent_builder_discards_its_copy(
    repository: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build_while_another_process_wins(target: Path, progress: object = None) -> Path:
        winner = default_demo_path()
        shutil.copytree(repository, winner)
        (winner / "winner").touch()
        return _FakeBuilder(repository)(target)

    monkeypatch.setattr(build, "build_demo_repository", build_while_another_process_wins)
    path = ensure_demo_repository(progress=False)
    assert (path / "winner").exists()
    assert [p.name for p in cache_dir.iterdir()] == [path.name]


def test_cached_repository_is_found_without_importing_torch(
    repository: Path, cache_dir: Path
) -> None:
    shutil.copytree(repository, default_demo_path())
    script = (
        "import sys\n"
        "from warpserve.server.demo.build import ensure_demo_repository\n"
        "print(ensure_demo_repository(progress=False))\n"
        "assert 'torch' not in sys.modules, 'torch imported for a cache hit'\n"
    )
    env = {**os.environ, "WARPSERVE_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(default_demo_path())


def test_missing_torch_raises_fix_it_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(demo_package, "train", raising=False)
    monkeypatch.setitem(sys.modules, "warpserve.server.demo.train", None)
    with pytest.raises(DemoBuildError, match=r"warpserve\[torch\]"):
        build_demo_repository(tmp_path / "repo")


# --- progress display -----------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_one_line_per_stage_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = StderrProgress(stream)
    for fraction in (0.0, 0.1, 0.2):
        progress("training fraud_scorer", fraction)
    progress("demo repository ready", 1.0)
    assert stream.getvalue().splitlines() == [
        "warpserve demo: training fraud_scorer (0%)",
        "warpserve demo: demo repository ready (100%)",
    ]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = _Terminal()
    progress = StderrProgress(stream)
    progress("training fraud_scorer", 0.5)
    progress("demo repository ready", 1.0)
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.count("\n") == 1 and text.endswith("\n")
    assert " 50% training fraud_scorer" in text


class _DriftsAfterFirstCall(torch.nn.Module):
    """Eager answers the first call (the parity reference) one way and later ones (the
    export's trace) another: what an export that drifted from PyTorch looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return rows[:, :1] * 0.0 + (0.5 if self.calls == 1 else 0.51)


def test_build_refuses_an_export_that_drifted_from_pytorch(tmp_path: Path) -> None:
    # Positive control for the build-time parity check that guards the cache.
    spec, rows = SPECS["fraud_scorer"], np.zeros((8, 16), np.float32)
    with pytest.raises(DemoBuildError, match="fraud_scorer: no variant passed its checks") as info:
        build.compile_demo_model(
            tmp_path, spec, _DriftsAfterFirstCall(), rows, "{}", lambda m, f: None
        )
    assert "FRAUD_PROBABILITY: max abs error 0.01" in str(info.value)
    assert not (tmp_path / "fraud_scorer" / "1").exists()


def test_the_raw_image_classifier_shares_the_version_and_declares_a_stage(
    repository: Path,
) -> None:
    from warpserve.server import preprocessing
    from warpserve.server.demo import raw

    config = _config(repository, raw.NAME)
    stage = preprocessing.plan(config, "config.pbtxt")
    assert stage is not None and stage.encoded and stage.size == (32, 32)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("IMAGE", mc.TYPE_STRING, [1])
    ]
    source = repository / "image_classifier" / "1"
    for path in source.rglob("*"):
        if path.is_file():
            copy = repository / raw.NAME / "1" / path.relative_to(source)
            assert copy.read_bytes() == path.read_bytes(), path.name
    assert (repository / raw.NAME / "labels.txt").read_text() == "cat\ndog\n"
    assert raw.NAME in (repository / "README.md").read_text(encoding="utf-8")
