"""The supervisor's control plane: one change at a time, applied to every worker.

Loads and rollouts go in two phases: every worker loads and verifies the new versions
(prepare); only when all did does any route to them (commit); a failure anywhere
unloads them where they loaded (abort), so the old version keeps serving everywhere
and the caller gets the failure. Routing changes and shared-memory registrations are
tried on one worker first (which checks them as every worker would), then on the rest.
A worker that is replaced meanwhile takes the result over from a live worker's snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.control.statsum import sum_statistics
from warpserve.server.control.wire import WORKER_SERVICE, ControlClient
from warpserve.server.errors import InvalidInput, Unavailable, WarpserveError
from warpserve.server.lifecycle.registry import check_rollout
from warpserve.server.lifecycle.served import parse_version
from warpserve.server.repository import overrides
from warpserve.server.repository.repository import ModelRepository

log = logging.getLogger(__name__)

# How long a scrape waits for the workers to mirror their counters.
FLUSH_TIMEOUT_S = 2.0
NO_WORKER = "no server process is running; retry shortly"
# Routing changes, one worker first, then the others.
FIRST_THEN_REST = frozenset({"promote", "rollback", "set_split", "set_shadow"})


@dataclass
class WorkerLink:
    index: int
    pid: int
    client: ControlClient
    serving: bool = False


class Coordinator:
    def __init__(self, repository: ModelRepository, expected: int) -> None:
        self.repository = repository
        self.expected = expected
        self.workers: dict[int, WorkerLink] = {}
        self.lock = asyncio.Lock()
        self.started = asyncio.Event()  # every first worker registered
        self.shutting_down = False
        self.loaded: set[str] = set()  # model names the workers hold (the poller's view)

    # -- the supervisor's internal service ----------------------------------------------

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "register":
            return await self.register(**args)
        if op == "serving":
            self.workers[args["index"]].serving = True
            return None
        if op == "ready":
            return self.ready()
        if op == "statistics":
            return await self.statistics(args["name"], args["version"])
        await self.started.wait()
        async with self.lock:
            return await self._change(op, args)

    def ready(self) -> bool:
        serving = {i for i, w in self.workers.items() if w.serving}
        return not self.shutting_down and serving >= set(range(self.expected))

    async def register(self, index: int, pid: int, socket: str, respawned: bool) -> None:
        link = WorkerLink(index, pid, ControlClient(socket, WORKER_SERVICE))
        if not respawned:
            self.workers[index] = link
            if len(self.workers) >= self.expected:
                self.started.set()
            return
        await self.started.wait()
        async with self.lock:
            live = list(self.workers.values())
            if live:
                state = await live[0].client.call("snapshot")
                await link.client.call("adopt", state=state)
            self.workers[index] = link
        log.info("worker %d (pid %d) took over the current models and regions", index, pid)

    def forget(self, index: int, pid: int) -> None:
        link = self.workers.get(index)
        if link is not None and link.pid == pid:
            del self.workers[index]

    # -- changes ------------------------------------------------------------------------

    async def _change(self, op: str, args: dict[str, Any]) -> Any:
        if op == "load_request":
            return await self._load_request(args["request"])
        if op == "load":
            return await self._load(args["name"], args["versions"], args["activate"])
        if op == "rollout":
            check_rollout(args["version"], args["canary_percent"])
            return await self._two_phase(
                args["name"], [args["version"]], "commit_rollout",
                version=args["version"], canary_percent=args["canary_percent"],
            )  # fmt: skip
        if op == "unload":
            await self._all(op, args)
            self.loaded.discard(args["name"])
            return None
        if op == "guard_rollback":
            return any(r is True for r in await self._all(op, args))
        if op == "shm_register":
            return await self._register_region(args)
        if op == "shm_unregister":
            return await self._all(op, args)
        if op in FIRST_THEN_REST:
            return await self._first_then_rest(op, args)
        raise InvalidInput(f"unknown internal call {op!r}")

    async def _load_request(self, encoded: str) -> None:
        request = pb.RepositoryModelLoadRequest.FromString(base64.b64decode(encoded))
        if request.repository_name:
            raise InvalidInput("only the default repository (empty repository_name) exists")
        params = dict(request.parameters.items())
        versions = None
        if "version" in params:
            versions = [parse_version(str(params.pop("version").int64_param or ""))]
        if params:  # written once, into the repository every worker reads
            overrides.apply(self.repository, request.model_name, params)
        await self._load(request.model_name, versions, True)

    async def _load(self, name: str, versions: list[int] | None, activate: bool) -> None:
        await self._two_phase(name, versions, "commit_load", activate=activate)

    async def _two_phase(
        self, name: str, versions: list[int] | None, commit: str, **commit_args: Any
    ) -> None:
        links = list(self.workers.values())
        prepared = await _gather(
            [w.client.call("prepare", name=name, versions=versions) for w in links]
        )
        failed = [r for r in prepared if isinstance(r, BaseException)]
        done = [(w, r) for w, r in zip(links, prepared, strict=True) if isinstance(r, dict)]
        if failed or not done:
            await _gather([w.client.call("abort", name=name, fresh=r["fresh"]) for w, r in done])
            raise _first_error(failed) if failed else Unavailable(NO_WORKER)
        args = dict(commit_args)
        if commit == "commit_load":
            args["wanted"] = done[0][1]["wanted"]
        _raise_any(await _gather([w.client.call(commit, name=name, **args) for w, _ in done]))
        self.loaded.add(name)

    async def _first_then_rest(self, op: str, args: dict[str, Any]) -> Any:
        links = list(self.workers.values())
        if not links:
            raise Unavailable(NO_WORKER)
        result = await links[0].client.call(op, **args)
        _raise_any(await _gather([w.client.call(op, **args) for w in links[1:]]))
        return result

    async def _register_region(self, args: dict[str, Any]) -> None:
        links = list(self.workers.values())
        if not links:
            raise Unavailable(NO_WORKER)
        await links[0].client.call("shm_register", **args)
        rest = await _gather([w.client.call("shm_register", **args) for w in links[1:]])
        if any(isinstance(r, BaseException) for r in rest):
            await self._all("shm_unregister", {"name": args["name"]})
            _raise_any(rest)

    async def _all(self, op: str, args: dict[str, Any]) -> list[Any]:
        results = await _gather([w.client.call(op, **args) for w in self.workers.values()])
        _raise_any(results)
        return results

    # -- reads --------------------------------------------------------------------------

    async def statistics(self, name: str, version: str) -> str:
        calls = [w.client.call("statistics", name=name, version=version) for w in self.live()]
        replies = [
            pb.ModelStatisticsResponse.FromString(base64.b64decode(r))
            for r in await _gather(calls)
            if not isinstance(r, BaseException)
        ]
        return base64.b64encode(sum_statistics(replies).SerializeToString()).decode()

    async def flush_metrics(self) -> None:
        calls = [w.client.call("flush_metrics", timeout=FLUSH_TIMEOUT_S) for w in self.live()]
        await _gather(calls)

    async def refresh_loaded(self) -> None:
        """The model names the workers hold, from one worker (they all hold the same)."""
        for link in self.live():
            state = await link.client.call("snapshot")
            self.loaded = set(state["models"])
            return

    def live(self) -> list[WorkerLink]:
        return list(self.workers.values())


async def _gather(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Every call's result or exception; a worker that cannot be reached (it died and is
    being replaced, and the replacement takes the result over) counts as done."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    out: list[Any] = []
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            log.warning("a worker did not answer an internal call: %s", result.details())
            out.append(None)
        else:
            out.append(result)
    return out


def _first_error(failures: list[BaseException]) -> BaseException:
    for failure in failures:
        if isinstance(failure, WarpserveError):
            return failure
    return failures[0]


def _raise_any(results: list[Any]) -> None:
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise _first_error(failures)
