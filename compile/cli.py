"""``warpserve compile``: flags, and the exit codes 0 (written), 1 (no variant), 2 (usage)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from warpserve.compile.names import AUTO, TARGET_NAMES
from warpserve.server.argtypes import positive_float, positive_int

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _targets(value: str) -> list[str]:
    if value == "auto":
        return list(AUTO)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in TARGET_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {unknown or value!r}; use auto or a comma-separated list of "
            f"{', '.join(TARGET_NAMES)}"
        )
    return list(dict.fromkeys(names))


def _batch_sizes(value: str) -> list[int]:
    return sorted({positive_int(v) for v in value.split(",")})


def _model_name(value: str) -> str:
    if not _NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a model name (letters, digits, '_', '-', '.'; no '/')"
        )
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a torch.export program (.pt2), a TorchScript file, package.module:factory "
        "(a callable returning the module), or an MLflow pytorch model folder",
    )
    p.add_argument("--name", required=True, type=_model_name, help="model name in the repository")
    p.add_argument("--model-repository", required=True, type=Path, help="repository to write to")
    p.add_argument("--version", type=positive_int, help="version number (default: next free)")
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME:DIMS:DTYPE",
        help="an input without its batch dimension, e.g. image:3x224x224:FP32 (repeat per "
        "input, in forward() order; optional for a .pt2 or with --example-inputs)",
    )
    p.add_argument(
        "--example-inputs",
        type=Path,
        metavar="FILE.npz",
        help="real rows, one array per input (batch first): validation, calibration and "
        "golden data",
    )
    p.add_argument(
        "--reference-inputs",
        type=Path,
        metavar="FILE.npz",
        help="training rows, one array per input, for the version's drift reference "
        "(default: --example-inputs; without either, none is written)",
    )
    p.add_argument(
        "--output-names",
        type=lambda v: [n for n in v.split(",") if n],
        metavar="A,B",
        help="names of forward()'s outputs, in order (default OUTPUT0, OUTPUT1, ...)",
    )
    p.add_argument("--state-dict", type=Path, help="weights for a package.module:factory MODEL")
    p.add_argument("--max-batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument(
        "--targets",
        type=_targets,
        default=list(AUTO),
        help=f"auto (default) or a comma-separated list of {', '.join(TARGET_NAMES)}",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=positive_float,
        help="the chosen variant's p99 at its batch size must stay within this",
    )
    p.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        metavar="1,8,32",
        help="batch sizes to measure (default: powers of two up to --max-batch-size)",
    )
    p.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="PRECISION=ATOL,RTOL",
        help="parity tolerance per precision (fp32, fp16, int8), e.g. int8=0.1,0.05",
    )
    p.add_argument(
        "--seconds-per-point",
        type=positive_float,
        default=0.2,
        help="time spent measuring each variant at each batch size (default 0.2)",
    )
    p.add_argument("--all", action="store_true", help="keep every passing variant as a version")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from warpserve.compile.errors import CompileError

    try:
        import torch  # noqa: F401 - only to say plainly that it is missing
    except ImportError as exc:
        print(
            f"warpserve compile: error: compiling needs torch ({exc}); install it with "
            "pip install 'warpserve[torch]'",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args)
    except CompileError as exc:
        print(f"warpserve compile: error: {exc}", file=sys.stderr)
        report = getattr(exc, "report", None)
        if args.json and report is not None:
            print(json.dumps(report, indent=2))
        return exc.exit_code


def _request(args: argparse.Namespace) -> object:
    from warpserve.compile import parity, specs
    from warpserve.compile.errors import UsageError
    from warpserve.compile.pipeline import CompileRequest
    from warpserve.compile.source import import_path_hint, load_source

    if args.batch_sizes and max(args.batch_sizes) > args.max_batch_size:
        raise UsageError(
            f"--batch-sizes {args.batch_sizes} go beyond --max-batch-size {args.max_batch_size}"
        )
    tolerances = dict(parity.DEFAULT_TOLERANCES)
    tolerances.update(parity.parse_tolerance(t) for t in args.tolerance)
    inputs = [specs.parse_input(text) for text in args.input] if args.input else None
    examples = specs.read_examples(args.example_inputs) if args.example_inputs else None
    reference = (
        specs.read_examples(args.reference_inputs, "--reference-inputs")
        if args.reference_inputs
        else None
    )
    import_path_hint()
    source = load_source(args.model, args.state_dict)
    return CompileRequest(
        source=source,
        name=args.name,
        repository=args.model_repository,
        version=args.version,
        inputs=inputs,
        examples=examples,
        reference_inputs=reference,
        output_names=args.output_names,
        max_batch_size=args.max_batch_size,
        targets=args.targets,
        budget_ms=args.latency_budget_ms,
        keep_all=args.all,
        tolerances=tolerances,
        batch_sizes=args.batch_sizes,
        seconds_per_point=args.seconds_per_point,
    )


def _run(args: argparse.Namespace) -> int:
    import logging

    # Backends log each load at INFO; the progress lines already say what happens.
    logging.getLogger("warpserve").setLevel(logging.WARNING)
    from warpserve.compile.pipeline import CompileRequest, compile_model
    from warpserve.compile.progress import Progress

    request = _request(args)
    assert isinstance(request, CompileRequest)
    progress = Progress("warpserve compile")
    try:
        outcome = compile_model(request, progress)
    finally:
        progress.finish()
    if args.json:
        print(json.dumps(outcome.report, indent=2))
        print(f"wrote {outcome.version_dir}", file=sys.stderr)
    else:
        print(_summary(outcome.report))
        print(f"wrote {outcome.version_dir}")
    return 0


def _summary(report: dict) -> str:
    lines = []
    for v in report["variants"]:
        best = max(v["points"], key=lambda p: p["throughput"], default=None)
        speed = f"best {best['throughput']:,.0f} rows/s at batch {best['batch']}" if best else ""
        note = v["reason"] or speed
        lines.append(f"  {v['name']:<14} {v['status']:<9} {note}")
    choice = report["choice"]
    lines.append(
        f"chose {choice['variant']} at batch {choice['batch']}: {choice['throughput']:,.0f} "
        f"rows/s, {choice['speedup_vs_eager']:.2f}x eager PyTorch"
        + (f", as served ({choice['served']['why']})" if choice.get("served") else "")
    )
    return "\n".join(lines)
