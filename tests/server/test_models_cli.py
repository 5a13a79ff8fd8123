"""``warpserve models`` against an in-process server running on a background thread:
every action, --json, the table, tokens, and the exit codes (0 done, 1 refused, 2 usage)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import free_port
from tests.models import write_affine, write_golden
from warpserve.server.cli import main
from warpserve.server.grpc.server import RunningServer, start_server
from warpserve.server.options import ServerOptions
from warpserve.server.tools import models_cli

MODEL = "affine"
TOKEN = "cli-token"


class BackgroundServer:
    """start_server on its own event loop in a thread, so that blocking clients can call it."""

    def __init__(self, repo: Path, **options: Any) -> None:
        settings: dict[str, Any] = {
            "grpc_address": "127.0.0.1",
            "grpc_port": 0,
            "allow_metrics": False,
            "allow_http": False,  # the CLI speaks gRPC; Triton's default port may be taken
            "exit_timeout_secs": 5.0,
            **options,
        }
        self.options = ServerOptions(model_repository=repo, **settings)
        self.started = threading.Event()
        self.running: RunningServer | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            self.running = await start_server(self.options)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.started.set()
        await self._stop.wait()
        await self.running.shutdown()

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        assert self.started.wait(60) and self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def url(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.grpc_port}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_affine(tmp_path, MODEL, (1,))
    return tmp_path


@pytest.fixture
def server(repo: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(repo) as background:
        yield background


def models(url: str, *args: str) -> int:
    return main(["models", "-u", url, *args])


def as_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def versions(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(v["version"]): v for v in status["versions"]}


def test_status_prints_a_table_and_json(
    server: BackgroundServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models(server.url, "status") == 0
    table = capsys.readouterr().out
    header, row = table.splitlines()[:2]
    assert header.split()[:3] == ["MODEL", "VERSION", "STATE"]
    assert row.split()[:4] == [MODEL, "1", "READY", "*"]
    assert "previous version (rollback target): -" in table
    assert models(server.url, "status", MODEL, "--json") == 0  # options after the action too
    data = as_json(capsys)
    version = data["models"][0]["versions"][0]
    assert (version["state"], version["active"], version["weight"]) == ("READY", True, 1.0)


def test_every_action_drives_the_server(
    server: BackgroundServer, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_affine(repo, MODEL, (2, 3), config=False)
    url = server.url
    assert models(url, "--json", "rollout", MODEL, "--version", "2", "--canary", "20") == 0
    weights = {v: s["weight"] for v, s in versions(as_json(capsys)["status"]).items()}
    assert weights == pytest.approx({1: 0.8, 2: 0.2})
    assert models(url, "--json", "promote", MODEL) == 0
    status = as_json(capsys)["status"]
    assert versions(status)[2]["active"] and int(status["previous_version"]) == 1
    assert models(url, "--json", "rollback", MODEL, "--reason", "drill") == 0
    assert versions(as_json(capsys)["status"])[1]["active"]
    assert models(url, "--json", "split", MODEL, "1=3", "2=1") == 0
    weights = {v: s["weight"] for v, s in versions(as_json(capsys)["status"]).items()}
    assert weights == pytest.approx({1: 0.75, 2: 0.25})
    assert models(url, "--json", "load", MODEL, "--version", "3") == 0
    assert versions(as_json(capsys)["status"])[3]["state"] == "READY"
    assert models(url, "--json", "shadow", MODEL, "--version", "3", "--percent", "50") == 0
    assert versions(as_json(capsys)["status"])[3]["shadow"]
    assert models(url, "--json", "shadow", MODEL, "--version", "0") == 0
    assert not versions(as_json(capsys)["status"])[3]["shadow"]
    assert models(url, "--json", "unload", MODEL, "--version", "3") == 0
    assert versions(as_json(capsys)["status"])[3]["state"] == "UNLOADED"
    assert models(url, "unload", MODEL) == 0
    assert "NOT LOADED" in capsys.readouterr().out
    assert models(url, "load", MODEL) == 0
    assert "READY" in capsys.readouterr().out


def test_a_refusal_exits_1_with_the_servers_message(
    server: BackgroundServer, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models(server.url, "promote", MODEL) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    vdir = write_affine(repo, MODEL, (2,), config=False) / "2"
    write_golden(vdir, 2, corrupt=True)
    assert models(server.url, "rollout", MODEL, "--version", "2") == 1
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "max abs error" in err
    assert "golden check" in err and "serving version is unchanged" in err
    assert models(server.url, "--json", "unload", MODEL, "--version", "2") == 0
    assert versions(as_json(capsys)["status"])[2]["state"] == "UNLOADED"
    assert models(server.url, "status", "no_such_model") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["split", MODEL, "1=x"],
        ["split", MODEL, "1:50"],
        ["split", MODEL, "0=5"],
        ["split", MODEL, "1=-2"],
        ["rollout", MODEL],
        ["shadow", MODEL, "--percent", "5"],
        ["frobnicate", MODEL],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["models", "-u", "127.0.0.1:1", *argv])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_token_comes_from_a_file_or_the_environment(
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "token").write_text(TOKEN + "\n")
    (secrets / "wrong").write_text("not-it")
    (secrets / "empty").write_text("")
    monkeypatch.delenv("WARPSERVE_ADMIN_TOKEN", raising=False)
    with BackgroundServer(repo, admin_token=TOKEN) as background:
        url = background.url
        assert models(url, "status") == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert models(url, "--token-file", str(secrets / "wrong"), "status") == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        assert models(url, "--token-file", str(secrets / "token"), "status") == 0
        assert models(url, "--token-file", str(secrets / "empty"), "status") == 2
        assert models(url, "--token-file", str(secrets / "missing"), "status") == 2
        monkeypatch.setenv("WARPSERVE_ADMIN_TOKEN", TOKEN)
        assert models(url, "status") == 0


def test_a_server_without_the_admin_api_gets_a_hint(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with BackgroundServer(repo, grpc_address="0.0.0.0") as background:
        assert models(background.url, "status") == 1
    err = capsys.readouterr().err
    assert "UNIMPLEMENTED" in err and "--admin-token-file" in err


def test_an_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert models(f"127.0.0.1:{free_port()}", "--timeout", "5", "status") == 1
    assert "cannot reach" in capsys.readouterr().err


def test_event_loop_choice() -> None:
    import uvloop

    from warpserve.server.cli import event_loop_factory

    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("auto") is uvloop.new_event_loop  # installed with warpserve


def test_the_top_level_help_names_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())  # argparse wraps the line
    line = summary[summary.index("models model lifecycle:") :].split(" options:")[0]
    assert "shadow" in models_cli.CALLS
    for action in models_cli.CALLS:
        assert f" {action}" in line, f"'warpserve --help' omits 'models {action}'"
