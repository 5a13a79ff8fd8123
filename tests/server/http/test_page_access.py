"""The status page and /api/status follow the admin API's rule (start_server in-process).

Off loopback is simulated as the admin API's tests do: the server binds the wildcard
address and the client reaches it over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.models import write_affine
from warpserve.server.grpc.server import start_server
from warpserve.server.http.access import COOKIE
from warpserve.server.options import ServerOptions

MODEL = "affine"
TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

Client = Callable[..., Awaitable[tuple[int, Any, aiohttp.ClientResponse]]]


@contextlib.asynccontextmanager
async def http_server(repo: Path, address: str, token: str | None) -> AsyncIterator[Client]:
    """A server whose HTTP port binds ``address``; yields get(path, **kwargs) ->
    (status, body, response) over 127.0.0.1, redirects not followed, cookies not kept."""
    write_affine(repo, MODEL, (1,))
    options = ServerOptions(
        model_repository=repo,
        grpc_address="127.0.0.1",
        grpc_port=0,
        http_address=address,
        http_port=0,
        allow_metrics=False,
        admin_token=token,
        exit_timeout_secs=5.0,
    )
    running = await start_server(options)
    assert running.http is not None
    base = f"http://127.0.0.1:{running.http.port}"

    async def call(path: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any, Any]:
        jar = aiohttp.DummyCookieJar()
        async with (
            aiohttp.ClientSession(cookie_jar=jar) as session,
            session.request(method, base + path, allow_redirects=False, **kwargs) as reply,
        ):
            if reply.content_type == "application/json":
                return reply.status, await reply.json(), reply
            return reply.status, await reply.text(), reply

    try:
        yield call
    finally:
        await running.shutdown()


def test_off_loopback_without_a_token_the_page_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with caplog.at_level(logging.WARNING):
            async with http_server(tmp_path, "0.0.0.0", None) as get:
                status, body, _ = await get("/api/status")
                assert status == 403 and "WARPSERVE_ADMIN_TOKEN" in body["error"]
                assert "--http-address 127.0.0.1" in body["error"]
                status, text, _ = await get("/")
                assert status == 403 and "not served" in text
                assert 'id="sign-in"' in text and "hidden" in text  # no token would open it
                status, _, _ = await get("/?token=anything")
                assert status == 403
                # Positive control: the port itself serves KServe.
                assert (await get("/v2/health/ready"))[0] == 200
                assert (await get(f"/v2/models/{MODEL}"))[0] == 200
        assert "status page is not served" in caplog.text

    asyncio.run(main())


def test_off_loopback_with_a_token_the_page_needs_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, "0.0.0.0", TOKEN) as get:
            status, body, reply = await get("/api/status")
            assert status == 401 and "Bearer" in body["error"]
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = {"Authorization": "Bearer not-the-token"}
            assert (await get("/api/status", headers=wrong))[0] == 403
            status, body, _ = await get("/api/status", headers=BEARER)
            assert status == 200 and [m["model"] for m in body["models"]] == [MODEL]

            status, text, _ = await get("/")
            assert status == 401 and 'id="sign-in"' in text and "hidden" not in text
            assert (await get("/", headers=BEARER))[0] == 200
            # The KServe API is not the page's: open as on Triton.
            assert (await get(f"/v2/models/{MODEL}/stats"))[0] == 200

    asyncio.run(main())


def test_the_browser_flow_sets_a_cookie_that_opens_the_page(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, "0.0.0.0", TOKEN) as get:
            status, text, _ = await get("/?token=not-the-token")
            assert status == 403 and "not the server's admin token" in html.unescape(text)
            status, _, reply = await get(f"/?token={TOKEN}")
            assert status == 303 and reply.headers["Location"] == "/"
            cookie = reply.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Lax"
            assert TOKEN not in cookie.value  # it opens the page, not the admin API
            jar = {"Cookie": f"{COOKIE}={cookie.value}"}
            status, body, _ = await get("/api/status", headers=jar)
            assert status == 200 and body["models"]
            status, text, _ = await get("/", headers=jar)
            assert status == 200 and 'id="models"' in text

            # The sign-in form posts the token; a forged cookie is refused.
            status, _, reply = await get("/", "POST", data={"token": TOKEN})
            assert status == 303 and reply.cookies[COOKIE].value == cookie.value
            forged = {"Cookie": f"{COOKIE}={'0' * len(cookie.value)}"}
            assert (await get("/api/status", headers=forged))[0] == 403

    asyncio.run(main())


def test_on_loopback_the_page_is_open_without_a_token(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, "127.0.0.1", None) as get:
            status, body, _ = await get("/api/status")
            assert status == 200 and body["models"]
            status, text, _ = await get("/")
            assert status == 200 and 'id="models"' in text

    asyncio.run(main())


def test_on_loopback_a_configured_token_is_still_required(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, "127.0.0.1", TOKEN) as get:
            assert (await get("/api/status"))[0] == 401
            assert (await get("/api/status", headers=BEARER))[0] == 200

    asyncio.run(main())
