"""The status page at ``/`` on the HTTP port, and the JSON it polls.

Plain HTML, CSS and JavaScript shipped in the package (``page/``): no build step, nothing
fetched from elsewhere. The page polls ``/api/status`` once a second and draws its charts
from the differences between polls of the server's own counters (ModelStatistics), so
what it shows is what ``tritonclient`` and Prometheus see.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from aiohttp import web

from warpserve.server.grpc.admin import model_status
from warpserve.server.http.jsonproto import to_json
from warpserve.server.http.routes import RestApi, json_response
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.serverapi import ServerApi

STATUS_PATH = "/api/status"
_FILES = {
    "/": ("index.html", "text/html"),
    "/page.js": ("page.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}


def add_status_page(api: RestApi, server: ServerApi) -> None:
    folder = resources.files("warpserve.server.http") / "page"
    for path, (name, content_type) in _FILES.items():
        api.add_page(path, _file_handler((folder / name).read_bytes(), content_type))

    async def status(request: web.BaseRequest) -> web.Response:
        return json_response(await status_document(server))

    api.add_page(STATUS_PATH, status)


def _file_handler(body: bytes, content_type: str) -> Any:
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
        document = to_json(model_status(name, served))
        for version in document["versions"]:
            version["statistics"] = statistics.get((name, str(version["version"])))
        document["image"] = _image_input(served.versions if served else {}, document)
        models.append(document)
    return {
        "server": to_json(server.server_metadata()),
        "ready": await server.server_ready(),
        "time_ms": time.time() * 1000,
        "models": models,
    }


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
