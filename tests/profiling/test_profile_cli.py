"""``warpserve profile``: planted regression, same speed, improvement, reports, bad flags.

The planted regression is a genuinely heavier graph (the model computed twice), so the
verdict is robust on a loaded machine; nothing here asserts a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models import write_mlp
from warpserve.profiling import runner
from warpserve.profiling.cli import main
from warpserve.profiling.planted import write_slowed_copy

FAST = ["--batch-sizes", "32", "--iterations", "60", "--warmup", "3"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp: version 1, version 2 = version 1 computed twice, version 3 = a copy of 1,
    version 4 = version 1 computed three times."""
    root = tmp_path_factory.mktemp("repo")
    model_dir = write_mlp(root, width=384)
    write_slowed_copy(model_dir / "1", model_dir / "2", factor=2)
    shutil.copytree(model_dir / "1", model_dir / "3")
    write_slowed_copy(model_dir / "1", model_dir / "4", factor=3)
    return root


@pytest.fixture(scope="module")
def regression(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("out") / "r"
    args = ["--model-repository", str(repo), "--model", "mlp", "--version", "2"]
    code = main([*args, "--baseline-version", "1", *FAST, "--output", str(out)])
    return code, out


def test_planted_2x_regression_exits_1_and_the_report_names_it(
    regression: tuple[int, Path],
) -> None:
    code, out = regression
    assert code == 1
    profile = json.loads((out / "profile.json").read_text())
    comparison = profile["comparison"]
    assert comparison["verdict"] == "regression"
    assert comparison["batches"]["32"]["median_ratio"] > 1.3
    # The op profile shows where: the extra copy's ops are new (op times themselves are
    # timings, so which ops count as slower is not asserted).
    changes = comparison["ops"]["32"]
    assert {c["op"] for c in changes["new"]} >= {"Max"}
    md = (out / "report.md").read_text()
    assert "REGRESSION" in md and "| 32 | regression |" in md and "slower" in md


def test_reports_hold_the_tables_the_plots_and_a_loadable_trace(
    regression: tuple[int, Path],
) -> None:
    _, out = regression
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 2  # latency distribution and top ops
    assert "<table>" in html and "regression" in html
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"input_staging", "compute", "output_staging"} <= names
    profile = json.loads((out / "profile.json").read_text())
    assert profile["plan"]["interleaved"] is True
    assert {"cpu_model", "usable_cores", "libraries", "hostname"} <= set(profile["machine"])
    samples = profile["versions"]["2"]["batches"]["32"]["latency_ms"]
    assert len(samples) == 60 and all(s > 0 for s in samples)
    assert profile["memory"]["peak_rss_mb"] > 0


def test_a_copy_of_the_same_version_passes(repo: Path, tmp_path: Path) -> None:
    args = ["--model-repository", str(repo), "--model", "mlp", "--version", "3"]
    code = main([*args, "--baseline-version", "1", *FAST, "--output", str(tmp_path)])
    assert code == 0
    assert json.loads((tmp_path / "profile.json").read_text())["comparison"]["verdict"] == "pass"


def test_the_faster_version_is_an_improvement(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model-repository", str(repo), "--model", "mlp", "--version", "1"]
    code = main([*args, "--baseline-version", "4", *FAST, "--format", "json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "improvement"


def test_too_few_iterations_give_insufficient_data_and_exit_2(repo: Path, tmp_path: Path) -> None:
    args = ["--model-repository", str(repo), "--model", "mlp", "--version", "2"]
    code = main(
        [
            *args,
            "--baseline-version",
            "1",
            "--batch-sizes",
            "8",
            "--iterations",
            "10",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 2
    comparison = json.loads((tmp_path / "profile.json").read_text())["comparison"]
    assert comparison["verdict"] == "insufficient_data"


def test_stored_profiles_compare_and_other_machines_are_not_comparable(
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = {}
    for version in ("1", "2"):
        out = tmp_path / version
        args = ["--model-repository", str(repo), "--model", "mlp", "--version", version]
        assert main([*args, *FAST, "--output", str(out)]) == 0  # no baseline: no verdict
        paths[version] = out / "profile.json"
    capsys.readouterr()
    code = main(
        [
            "compare",
            str(paths["1"]),
            str(paths["2"]),
            "--format",
            "markdown",
            "--output",
            str(tmp_path / "cmp"),
        ]
    )
    assert code == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "report.html").is_file()
    elsewhere = json.loads(paths["2"].read_text())
    elsewhere["machine"]["cpu_model"] = "another CPU"
    moved = tmp_path / "elsewhere.json"
    moved.write_text(json.dumps(elsewhere))
    assert main(["compare", str(paths["1"]), str(moved)]) == 2
    assert "not comparable" in capsys.readouterr().out


def test_without_torch_the_runner_writes_its_own_trace(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "_torch_profiler", lambda: None)
    args = ["--model-repository", str(repo), "--model", "mlp", "--version", "1"]
    assert (
        main([*args, "--batch-sizes", "1,4", "--iterations", "5", "--output", str(tmp_path)]) == 0
    )
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["profiler"].startswith("none: torch is not installed")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert {e["name"] for e in events} == {"run", "input_staging", "compute", "output_staging"}
    assert {e["tid"] for e in events} == {"batch 1", "batch 4"}


BAD_PROFILE_FLAGS = [
    (["--batch-sizes", "0"], "batch sizes"),
    (["--batch-sizes", "a,b"], "batch sizes"),
    (["--batch-sizes", "128"], "max_batch_size=64"),
    (["--iterations", "0"], "whole number"),
    (["--warmup", "-1"], "whole number"),
    (["--format", "xml"], "invalid choice"),
    (["--max-p99-ratio", "0.9"], "ratio above 1"),
    (["--max-median-ratio", "inf"], "ratio above 1"),
    (["--alpha", "2"], "probability"),
    (["--version", "9"], "no complete version 9"),
    (["--version", "x"], "whole number"),
    (["--baseline-version", "0"], "whole number"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_PROFILE_FLAGS)
def test_every_bad_flag_exits_2_with_a_clear_message(
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    base = ["--model-repository", str(repo), "--model", "mlp", "--iterations", "2"]
    assert main([*base, "--output", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_bad_repository_model_and_golden_data_exit_2(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model-repository", str(tmp_path / "none"), "--model", "mlp"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--model-repository", str(repo), "--model", "nope"]) == 2
    assert "'nope' is not in the repository" in capsys.readouterr().err
    assert main(["--model"]) == 2
    bare = tmp_path / "bare"
    shutil.copytree(repo / "mlp", bare / "mlp", ignore=shutil.ignore_patterns("golden"))
    assert main(["--model-repository", str(bare), "--model", "mlp", "--version", "1"]) == 2
    assert "golden/inputs.npz" in capsys.readouterr().err


def test_unreadable_profiles_exit_2(
    regression: tuple[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = regression[1] / "profile.json"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": 1}))
    other_model = tmp_path / "other.json"
    data = json.loads(good.read_text())
    data["model"] = "other"
    other_model.write_text(json.dumps(data))
    for args, message in [
        ([str(tmp_path / "missing.json"), str(good)], "cannot read profile"),
        ([str(garbage), str(good)], "is not JSON"),
        ([str(good), str(foreign)], "is not a warpserve profile"),
        ([str(good), str(other_model)], "compare two versions of one model"),
        ([str(good)], "required"),
        ([str(good), str(good), "--format", "yaml"], "invalid choice"),
    ]:
        assert main(["compare", *args]) == 2
        assert message in capsys.readouterr().err


def test_profiling_does_not_import_the_servers_grpc_layer() -> None:
    code = (
        "import sys\n"
        "import warpserve.profiling.cli, warpserve.profiling.profile\n"
        "bad = [m for m in sys.modules if m.startswith('warpserve.server.grpc')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_warpserve_command_hands_profile_to_the_profiler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from warpserve.server.cli import main as warpserve

    assert warpserve(["profile", "compare", "--bogus"]) == 2
    assert "warpserve profile compare" in capsys.readouterr().err
