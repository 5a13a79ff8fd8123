"""``warpserve models``: drive a running server's admin API.

    warpserve models -u localhost:8001 status [MODEL]
    warpserve models rollout MODEL --version 2 --canary 10
    warpserve models promote MODEL | rollback MODEL
    warpserve models split MODEL 1=80 2=20
    warpserve models shadow MODEL --version 3 --percent 5

Exit status: 0 done, 1 the server refused (its message is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.server.grpc.admin_auth import METADATA_KEY, TOKEN_ENV, load_token
from warpserve.server.tools import tls_client

USAGE_ERROR = 2
REFUSED = 1

Call = Callable[[apb_grpc.ModelAdminStub, argparse.Namespace, dict[str, Any]], Message]


def _weight(text: str) -> tuple[int, float]:
    version, sep, weight = text.partition("=")
    try:
        pair = int(version), float(weight)
    except ValueError:
        pair = (0, -1.0)
    if not sep or pair[0] <= 0 or pair[1] < 0:
        raise argparse.ArgumentTypeError(
            f"expected VERSION=WEIGHT with a positive version and a weight >= 0, got {text!r}"
        )
    return pair


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Accepted before and after the action; the copy after it must not reset the first.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-u",
        "--url",
        default=default("localhost:8001"),
        help="the server's gRPC address HOST:PORT (default localhost:8001)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        help=f"file holding the admin token (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the server's answer as JSON",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(120.0),
        help="seconds to wait for the server (loads can take a while)",
    )
    tls_client.add_arguments(parser, suppress=suppress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, suppress=False)
    shared = argparse.ArgumentParser(add_help=False)
    _common(shared, suppress=True)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=text, description=text, parents=[shared])

    p = action("status", "every version with state, routing, counters and latency")
    p.add_argument("model", nargs="?", default="", help="one model (default: all)")
    p = action(
        "load",
        "load a version beside the serving ones (route to it with rollout, "
        "split or shadow); without --version, load and serve what the policy selects",
    )
    p.add_argument("model")
    p.add_argument("--version", type=int, default=0)
    p = action("unload", "drain and unload a version (default: every version)")
    p.add_argument("model")
    p.add_argument("--version", type=int, default=0)
    p = action("rollout", "load, verify and route to a version (all traffic, or a canary share)")
    p.add_argument("model")
    p.add_argument("--version", type=int, required=True)
    p.add_argument(
        "--canary",
        type=float,
        default=0.0,
        metavar="PERCENT",
        help="give the version this share of traffic until 'promote'",
    )
    p = action("promote", "make the canary the only serving version")
    p.add_argument("model")
    p = action("rollback", "route to the previous version again (or end a canary), no load")
    p.add_argument("model")
    p.add_argument("--reason", default="manual", help="recorded in warpserve_rollbacks")
    p = action("split", "split unpinned traffic between loaded versions by weight")
    p.add_argument("model")
    p.add_argument("weights", nargs="+", type=_weight, metavar="VERSION=WEIGHT")
    p = action("shadow", "mirror a share of traffic to a version (its answers are dropped)")
    p.add_argument("model")
    p.add_argument("--version", type=int, required=True, help="0 stops mirroring")
    p.add_argument("--percent", type=float, default=100.0)


CALLS: dict[str, Call] = {
    "status": lambda s, a, kw: s.Status(apb.StatusRequest(model=a.model), **kw),
    "load": lambda s, a, kw: s.Load(apb.LoadRequest(model=a.model, version=a.version), **kw),
    "unload": lambda s, a, kw: s.Unload(apb.UnloadRequest(model=a.model, version=a.version), **kw),
    "rollout": lambda s, a, kw: s.Rollout(
        apb.RolloutRequest(model=a.model, version=a.version, canary_percent=a.canary), **kw
    ),
    "promote": lambda s, a, kw: s.Promote(apb.PromoteRequest(model=a.model), **kw),
    "rollback": lambda s, a, kw: s.Rollback(
        apb.RollbackRequest(model=a.model, reason=a.reason), **kw
    ),
    "split": lambda s, a, kw: s.SetTrafficSplit(
        apb.SetTrafficSplitRequest(model=a.model, weights=dict(a.weights)), **kw
    ),
    "shadow": lambda s, a, kw: s.SetShadow(
        apb.SetShadowRequest(model=a.model, version=a.version, percent=a.percent), **kw
    ),
}


def run(args: argparse.Namespace) -> int:
    try:
        token = load_token(args.token_file)
    except (OSError, ValueError) as exc:
        print(f"warpserve models: error: admin token: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        credentials = tls_client.channel_credentials(args)
    except tls_client.ClientTlsError as exc:
        print(f"warpserve models: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    kwargs: dict[str, Any] = {"timeout": args.timeout}
    if token:
        kwargs["metadata"] = ((METADATA_KEY, f"Bearer {token}"),)
    with tls_client.channel(args.url, credentials) as channel:
        stub = apb_grpc.ModelAdminStub(channel)
        try:
            response = CALLS[args.action](stub, args, kwargs)
        except grpc.RpcError as err:
            print(f"warpserve models: {_refusal(err, args.url)}", file=sys.stderr)
            return REFUSED
    print(_render(response, args.json))
    return 0


def _refusal(err: grpc.RpcError, url: str) -> str:
    code: grpc.StatusCode = err.code()
    details: str = err.details() or ""
    hints = {
        grpc.StatusCode.UNIMPLEMENTED: "the server does not serve the admin API: it listens "
        "on a non-loopback address without an admin token; restart it with "
        f"--admin-token-file or {TOKEN_ENV}",
        grpc.StatusCode.UNAUTHENTICATED: f"pass --token-file or set {TOKEN_ENV}",
    }
    if code is grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return (
            f"cannot reach a warpserve server at {url}: {details} (if it serves TLS, pass "
            "--ssl or --root-certificates, and for mutual TLS --certificate-chain and "
            "--private-key)"
        )
    hint = f" ({hints[code]})" if code in hints else ""
    return f"{code.name}: {details}{hint}"


def _render(response: Message, as_json: bool) -> str:
    if as_json:
        data = json_format.MessageToDict(
            response,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        return json.dumps(data, indent=2, sort_keys=True)
    is_status = isinstance(response, apb.StatusResponse)
    models = list(response.models) if is_status else [response.status]
    return "\n\n".join(status_table(m) for m in models)


HEADER = (
    "MODEL",
    "VERSION",
    "STATE",
    "ACTIVE",
    "WEIGHT",
    "SHADOW",
    "OK",
    "FAIL",
    "IN-FLIGHT",
    "P50 ms",
    "P90 ms",
    "P99 ms",
    "SHADOW DIFF",
    "REASON",
)


def status_table(status: apb.ModelStatus) -> str:
    rows = [HEADER, *(_row(status.model, v) for v in status.versions)]
    if not status.versions:
        rows.append((status.model, "-", "NOT LOADED", *[""] * (len(HEADER) - 3)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"previous version (rollback target): {status.previous_version or '-'}")
    if status.fallback_model:
        lines.append(
            f"fallback model: {status.fallback_model} ({status.fallback_count} answers given)"
        )
    shed = [f"version {v.version}: {v.shed_count}" for v in status.versions if v.shed_count]
    if shed:
        lines.append(f"shed by priority load shedding: {', '.join(shed)}")
    lines += [guard_line(v) for v in status.versions if v.HasField("guard")]
    for v in status.versions:
        if v.HasField("drift"):
            lines += drift_lines(v.version, v.drift)
    return "\n".join(lines)


def drift_lines(version: int, d: apb.DriftStatus) -> list[str]:
    """The drift alarm of a version, and its features, worst PSI first."""
    state = "ALARM" if d.alarm else "ok"
    if d.window_rows < d.min_rows:
        state += f" (alarm needs {d.min_rows} rows)"
    head = (
        f"drift: version {version}: {state}, {d.window_rows} rows in the last "
        f"{d.window_seconds:g} s, thresholds PSI {d.psi_threshold:g} KS {d.ks_threshold:g}"
    )
    if d.alarms_raised:
        head += f", raised {d.alarms_raised}x"
    worst = sorted(d.features, key=lambda f: -f.psi)
    return [head] + [
        f"  {f.input}[{f.feature}]  PSI {f.psi:.3f}  KS {f.ks:.3f}{'  over' if f.over else ''}"
        for f in worst
    ]


def guard_line(v: apb.VersionStatus) -> str:
    """The latency guard's verdict on a version, with its evidence."""
    g = v.guard
    line = (
        f"guard: version {v.version} against {g.baseline_version} ({g.mode}): {g.verdict}, "
        f"median x{g.median_ratio:.2f}, p99 x{g.p99_ratio:.2f}, errors "
        f"{g.candidate_error_rate:.1%} vs {g.baseline_error_rate:.1%}, "
        f"{g.candidate_samples}/{g.baseline_samples} requests"
    )
    if g.rolled_back:
        line += f"; rolled back ({g.rolled_back})"
    if g.reason:
        line += f"; {g.reason}"
    if g.trace:
        line += f"; trace: {g.trace}"
    return line


def _row(model: str, v: apb.VersionStatus) -> tuple[str, ...]:
    lat = v.latency
    timing = [f"{x:.2f}" if lat.count else "-" for x in (lat.p50_ms, lat.p90_ms, lat.p99_ms)]
    return (
        model,
        str(v.version),
        v.state,
        "*" if v.active else "",
        f"{v.weight * 100:.3g}%",
        "*" if v.shadow else "",
        str(v.success_count),
        str(v.failure_count),
        str(v.in_flight),
        *timing,
        f"{v.shadow_max_abs_diff:.3g}" if v.shadow else "-",
        v.reason,
    )
