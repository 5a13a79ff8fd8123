"""The status page at ``/`` on the HTTP port, and the JSON it polls.

Plain HTML, CSS and JavaScript shipped in the package (``page/``): no build step, nothing
fetched from elsewhere. The page polls ``/api/status`` once a second and draws its charts
from the differences between polls of the server's own counters (ModelStatistics), so
what it shows is what ``tritonclient`` and Prometheus see.
"""

from __future__ import annotations

import html
import logging
import time
from importlib import resources
from typing import Any

from aiohttp import web

from warpserve.server.errors import PermissionDenied, Unauthenticated, WarpserveError
from warpserve.server.grpc.admin import model_status
from warpserve.server.http.access import QUERY, PageAccess
from warpserve.server.http.jsonproto import to_json
from warpserve.server.http.routes import Handler, RestApi, error_response, json_response
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.options import ServerOptions
from warpserve.server.serverapi import ServerApi

log = logging.getLogger(__name__)

STATUS_PATH = "/api/status"
# The script and style sheet hold no data, so they are served to anyone (the sign-in
# page uses the style sheet); the page and its JSON follow PageAccess.
_ASSETS = {"/page.js": ("page.js", "text/javascript"), "/page.css": ("page.css", "text/css")}
_FOLDER = resources.files("warpserve.server.http") / "page"


def add_status_page(api: RestApi, server: ServerApi, options: ServerOptions) -> None:
    access = PageAccess.of(options)
    if not access.served:
        log.warning("%s", access.off_message())
    for path, (name, content_type) in _ASSETS.items():
        api.add_page(path, _file_handler((_FOLDER / name).read_bytes(), content_type))
    page = _file_handler((_FOLDER / "index.html").read_bytes(), "text/html")
    api.add_page("/", _index(page, access), ("GET", "HEAD", "POST"))

    async def status(request: web.BaseRequest) -> web.Response:
        return json_response(await status_document(server))

    api.add_page(STATUS_PATH, _guarded(status, access))


def _guarded(handler: Handler, access: PageAccess) -> Handler:
    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        try:
            access.check(request)
        except Unauthenticated as exc:
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="warpserve"'
            return response
        return await handler(request)

    return guarded


def _index(page: Handler, access: PageAccess) -> Handler:
    """The page; without access, a sign-in form that takes the token (posted, or as
    ``?token=``) and answers with the cookie and a redirect to the page."""

    async def index(request: web.BaseRequest) -> web.StreamResponse:
        given = request.query.get(QUERY)
        if request.method == "POST":
            value = (await request.post()).get(QUERY)
            given = value if isinstance(value, str) else ""
        if given is not None and access.served and access.token is not None:
            if access.matches(given):
                return access.signed_in("/")
            return _sign_in(access, PermissionDenied("that is not the server's admin token"))
        try:
            access.check(request)
        except (Unauthenticated, PermissionDenied) as exc:
            return _sign_in(access, exc)
        return await page(request)

    return index


def _sign_in(access: PageAccess, refusal: WarpserveError) -> web.Response:
    text = (_FOLDER / "login.html").read_text()
    text = text.replace("{{message}}", html.escape(str(refusal)))
    # Off on this address: no token would open it, so no form is offered.
    text = text.replace("{{form_hidden}}", "" if access.served else "hidden")
    status = 401 if isinstance(refusal, Unauthenticated) else 403
    response = web.Response(text=text, status=status, content_type="text/html")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="warpserve"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _file_handler(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.BaseRequest) -> web.Response:
        response = web.Response(body=body, content_type=content_type)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return handler


async def status_document(server: ServerApi) -> dict[str, Any]:
    """Every model the server knows: its versions with state, traffic share, guard
    verdict, latency window and statistics counters; and what its image input takes."""
    registry = server.registry
    statistics = {(s.name, s.version): to_json(s) for s in (await server.statistics()).model_stats}
    models = []
    for name in sorted(set(registry.repository.model_names()) | set(registry.models)):
        served = registry.models.get(name)
        document = _with_statistics(to_json(model_status(name, served)), statistics)
        document["image"] = _image_input(served.versions if served else {}, document)
        models.append(document)
    if server.owned is not None:  # models the model owner serves for every frontend
        for status in await server.owned.listed_status():
            # Their versions live in the owner; what their image input takes is not known here.
            models.append({**_with_statistics(to_json(status), statistics), "image": None})
        models.sort(key=lambda document: str(document["model"]))
    return {
        "server": to_json(server.server_metadata()),
        "ready": await server.server_ready(),
        "time_ms": time.time() * 1000,
        "models": models,
    }


def _with_statistics(
    document: dict[str, Any], statistics: dict[tuple[str, str], Any]
) -> dict[str, Any]:
    name = document["model"]
    for version in document.get("versions", []):
        version["statistics"] = statistics.get((name, str(version["version"])))
    return document


def _image_input(versions: dict[int, ModelVersion], document: dict[str, Any]) -> Any:
    """For a model whose active version takes encoded images (an image stage on a BYTES
    input): the input's name and the output to ask for as classes. None otherwise."""
    active = next((v["version"] for v in document["versions"] if v["active"]), None)
    mv = versions.get(active) if active is not None else None
    if mv is None or mv.stage is None or not mv.stage.encoded or mv.validator is None:
        return None
    outputs = list(mv.validator.outputs)
    labelled = [name for name in outputs if name in mv.labels]
    batched = mv.validator.batched
    return {"input": mv.stage.input, "output": (labelled or outputs)[0], "batched": batched}
