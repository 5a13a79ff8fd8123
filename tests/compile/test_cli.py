"""``warpserve compile`` flags and exit codes: 0 written, 1 no variant, 2 usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from warpserve.server.cli import main

MLP = "tests.compile.models:mlp"
FAST = ["--max-batch-size", "4", "--batch-sizes", "1,4", "--seconds-per-point", "0.02"]


def _compile(tmp_path: Path, *args: str, model: str = MLP) -> list[str]:
    return ["compile", model, "--name", "m", "--model-repository", str(tmp_path / "repo"), *args]


def test_writes_a_version_and_the_last_line_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_compile(tmp_path, "--input", "x:16:FP32", "--targets", "onnx", *FAST))
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1] == f"wrote {tmp_path / 'repo' / 'm' / '1'}"
    assert any(line.split()[:2] == ["onnx", "passed"] for line in out)
    # The tiny MLP runs inline in the server, on one thread: the summary says so.
    assert out[-2].startswith("chose onnx at batch") and "as served (inline" in out[-2]


def test_json_output_and_example_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", x=rows)
    code = main(
        _compile(
            tmp_path,
            "--example-inputs",
            str(tmp_path / "rows.npz"),
            "--targets",
            "onnx",
            "--output-names",
            "SCORES",
            "--json",
            *FAST,
        )
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0
    assert report["inputs"] == [{"name": "x", "dims": [16], "dtype": "FP32"}]
    assert report["outputs"][0]["name"] == "SCORES"
    assert captured.err.strip().splitlines()[-1] == f"wrote {tmp_path / 'repo' / 'm' / '1'}"
    with np.load(tmp_path / "repo" / "m" / "1" / "golden" / "inputs.npz") as golden:
        np.testing.assert_array_equal(golden["x"], rows)


def test_no_variant_within_the_budget_exits_1_with_the_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        _compile(
            tmp_path,
            "--input",
            "x:16:FP32",
            "--targets",
            "onnx",
            "--latency-budget-ms",
            "0.00001",
            *FAST,
        )
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "no variant meets the latency budget of 1e-05 ms" in err and "lowest p99" in err
    assert not (tmp_path / "repo" / "m" / "1").exists()


def test_model_the_exporter_cannot_handle_exits_2_naming_the_construct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "tests.compile.models:data_dependent"
    code = main(_compile(tmp_path, "--input", "x:16:FP32", "--targets", "onnx", *FAST, model=model))
    err = capsys.readouterr().err
    assert code == 2
    assert "torch.export cannot handle this model" in err
    assert "data-dependent" in err
    assert "models.py" in err and "if x.sum() > 0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--targets", "onnx,tpu"], "unknown target(s) ['tpu']"),
        (["--max-batch-size", "0"], "expected a whole number >= 1"),
        (["--version", "-3"], "expected a whole number >= 1"),
        (["--latency-budget-ms", "fast"], "expected a number > 0"),
        (["--batch-sizes", "1,x"], "expected a whole number >= 1"),
        (["--name", "a/b"], "is not a model name"),
        (["--input", "x:16"], "expected NAME:DIMS:DTYPE"),
        (["--input", "x:16:FP32", "--tolerance", "int8=1"], "PRECISION=ATOL,RTOL"),
        (["--input", "x:16:FP32", "--batch-sizes", "64"], "go beyond --max-batch-size"),
        (["--input", "x:16:FP32", "--state-dict", "w.pt"], ""),  # see the next test
        (["--input", "x:16:FP32", "--example-inputs", "/nonexistent.npz"], "not a readable"),
        (["--input", "x:16:FP32", "--input", "y:4:FP32"], "forward() takes 1 inputs"),
        ([], "the inputs are unknown"),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(_compile(tmp_path, *args)))
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("/nonexistent/model.pt2", "no such file or folder"),
        ("missing_file.pt", "no such file or folder"),
        ("tests.compile.models:nothing_here", "cannot import 'nothing_here'"),
        ("no_such_package.mod:make", "cannot import 'make'"),
        ("tests.compile.models:not_a_module", "expected a torch.nn.Module"),
    ],
)
def test_unreadable_models_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, fragment: str
) -> None:
    code = main(_compile(tmp_path, "--input", "x:16:FP32", model=model))
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_files_that_are_not_models_and_wrong_weights_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    assert main(_compile(tmp_path, "--input", "x:16:FP32", model=str(junk))) == 2
    assert "neither a torch.export program (.pt2) nor a TorchScript file" in capsys.readouterr().err
    junk.rename(tmp_path / "junk.pt2")
    assert main(_compile(tmp_path, "--input", "x:16:FP32", model=str(tmp_path / "junk.pt2"))) == 2
    assert "not a torch.export program that torch.export.load can read" in capsys.readouterr().err
    import torch

    torch.save({"layers.0.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    args = ["--input", "x:16:FP32", "--state-dict", str(tmp_path / "w.pt")]
    assert main(_compile(tmp_path, *args)) == 2
    assert "--state-dict" in capsys.readouterr().err
    folder = tmp_path / "mlflow_like"
    folder.mkdir()
    assert main(_compile(tmp_path, "--input", "x:16:FP32", model=str(folder))) == 2
    assert "not an MLflow model" in capsys.readouterr().err


def test_export_program_needs_no_input_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from tests.compile import models

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        models.mlp().eval(), (torch.zeros(4, 16),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, tmp_path / "mlp.pt2")
    assert (
        main(_compile(tmp_path, "--targets", "onnx", *FAST, model=str(tmp_path / "mlp.pt2"))) == 0
    )
    capsys.readouterr()
    report = json.loads((tmp_path / "repo" / "m" / "1" / "compile_report.json").read_text())
    assert report["inputs"] == [{"name": "x", "dims": [16], "dtype": "FP32"}]
    static = torch.export.export(models.mlp().eval(), (torch.zeros(4, 16),))
    torch.export.save(static, tmp_path / "static.pt2")
    assert (
        main(_compile(tmp_path, "--targets", "onnx", *FAST, model=str(tmp_path / "static.pt2")))
        == 2
    )
    assert "input 'x' has a fixed batch size of 4" in capsys.readouterr().err


def test_torchscript_file_compiles_to_onnx_and_torchscript(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from tests.compile import models

    torch.jit.save(torch.jit.script(models.mlp().eval()), tmp_path / "mlp.pt")
    args = ["--input", "x:16:FP32", "--targets", "onnx,torchscript,aoti", *FAST]
    assert main(_compile(tmp_path, *args, model=str(tmp_path / "mlp.pt"))) == 0
    report = json.loads((tmp_path / "repo" / "m" / "1" / "compile_report.json").read_text())
    statuses = {v["name"]: (v["status"], v["reason"]) for v in report["variants"]}
    assert statuses["onnx"][0] == statuses["torchscript"][0] == "passed"
    assert statuses["aoti"] == (
        "skipped",
        "AOTInductor needs a torch.export program; a TorchScript model has none",
    )


def test_without_torch_exits_2_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets without it
    assert main(_compile(tmp_path, "--input", "x:16:FP32")) == 2
    assert "compiling needs torch" in capsys.readouterr().err
