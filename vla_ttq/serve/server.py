"""WebSocket policy server, wire-compatible with openpi's ``WebsocketClientPolicy``.

Per connection: send the msgpack metadata, then loop recv -> validate -> infer -> reply with
``server_timing``. One policy serves everyone: requests from all clients queue on one FIFO lock
and run one at a time in a single worker thread (so the event loop keeps answering health checks,
pings and other clients' bad requests meanwhile). Each client's TTQ episode calibration is swapped
in before its request and snapshotted after (see ``sessions.py``).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.protocol import State

from ..config import to_dict
from .codec import packb
from .protocol import (ERROR_TYPES, ObservationSpec, Request, RequestError, check_policy_output, error_reply,
                       parse_request)
from .sessions import ClientSession, ClientStateAccess

log = logging.getLogger("vla_ttq.serve")

PROTOCOL = "openpi-websocket-msgpack/1"
# Exceptions a policy raises for an observation it cannot handle (as opposed to a server bug).
_POLICY_REJECTIONS = (ValueError, TypeError, KeyError, IndexError)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: let the OS pick a free port (see PolicyServer.port)
    max_clients: int = 16  # more simultaneous connections get HTTP 503 at the handshake
    max_message_mb: float = 32.0  # bigger frames close the connection with code 1009
    # How error replies travel: "map" = msgpack {"error", "error_type"} (openpi-client returns it as
    # a dict); "text" = a text frame, which openpi-client raises as RuntimeError.
    error_frames: Literal["map", "text"] = "map"
    ping_interval: float | None = 20.0

    def validate(self) -> None:
        if self.error_frames not in ("map", "text"):
            raise ValueError(f"error_frames must be 'map' or 'text', got {self.error_frames!r}")
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {self.max_clients}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_mb <= 0:
            raise ValueError(f"max_message_mb must be > 0, got {self.max_message_mb}")


def _policy_metadata(policy: Any) -> dict[str, Any]:
    meta = getattr(policy, "metadata", None)
    meta = meta() if callable(meta) else meta
    return dict(meta or {})


class PolicyServer:
    """Serves one policy (anything with ``infer(obs)``, ``reset()`` and ``metadata``)."""

    def __init__(self, policy: Any, config: ServerConfig | None = None, spec: ObservationSpec | None = None):
        self.policy = policy
        self.config = config or ServerConfig()
        self.config.validate()
        meta = _policy_metadata(policy)
        self.spec = spec or ObservationSpec(state_dim=int(meta.get("state_dim", 8)))
        self.action_dim = meta.get("action_dim")
        self.client_state = ClientStateAccess(policy)
        self.metadata = {**meta, "server": {
            "name": "vla_ttq.serve", "protocol": PROTOCOL, "observation": self.spec.describe(),
            "reset": "send {'reset': True} alone (acknowledged) or inside an observation to start a new episode",
            "errors": {"frames": self.config.error_frames, "types": ERROR_TYPES},
            "per_client_state": self.client_state.stateful,
            "config": to_dict(self.config),
        }}
        self._metadata_frame = packb(self.metadata)  # fail at start-up, not at the first client
        self.sessions: dict[int, ClientSession] = {}
        self.counts = {"infer": 0, "reset": 0, **{k: 0 for k in ERROR_TYPES}}
        self.port: int | None = None
        self.ready = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    # ----------------------------------------------------------------------------- lifecycle
    def serve_forever(self) -> None:
        asyncio.run(self.run())

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()  # FIFO: clients are served in arrival order
        self._stop = asyncio.Event()
        self._in_flight: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._install_signal_handlers()
        cfg = self.config
        async with serve(self._handle_connection, cfg.host, cfg.port, compression=None,
                         max_size=int(cfg.max_message_mb * 2**20), ping_interval=cfg.ping_interval,
                         process_request=self._process_http) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving on ws://%s:%d (health: http://%s:%d/healthz)", cfg.host, self.port, cfg.host, self.port)
            self.ready.set()
            await self._stop.wait()
            await self._drain(server)
        self._executor.shutdown(wait=True)
        log.info("server stopped: %s", self.counts)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are delivered to the main thread only (tests run servers in threads)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._begin_shutdown, sig.name)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX
                pass

    def _begin_shutdown(self, why: str = "shutdown requested") -> None:
        if not self._draining:
            log.info("%s: finishing the request in flight, then closing %d connection(s)", why, len(self.sessions))
        self._draining = True
        self._stop.set()

    def shutdown(self) -> None:
        """Thread-safe graceful stop (what SIGTERM does)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._begin_shutdown)

    async def _drain(self, server: Server) -> None:
        await self._idle.wait()  # the request in flight finishes and its reply is sent
        server.close(close_connections=True, code=1001, reason="server shutting down")
        await server.wait_closed()

    # ----------------------------------------------------------------------------- HTTP side
    def _json_response(self, conn: ServerConnection, status: http.HTTPStatus, body: dict) -> HttpResponse:
        resp = conn.respond(status, json.dumps(body) + "\n")
        del resp.headers["Content-Type"]
        resp.headers["Content-Type"] = "application/json"
        return resp

    def _process_http(self, conn: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        if request.path.split("?", 1)[0] == "/healthz":
            if self._draining:
                return self._json_response(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "shutting_down"})
            return self._json_response(conn, http.HTTPStatus.OK, {
                "status": "ok", "clients": len(self.sessions), "counts": self.counts,
                "policy": self.metadata.get("policy_id") or self.metadata.get("policy")})
        if self._draining:
            return self._json_response(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "server shutting down"})
        if len(self.sessions) >= self.config.max_clients:
            return self._json_response(conn, http.HTTPStatus.SERVICE_UNAVAILABLE,
                                       {"error": f"too many clients (max {self.config.max_clients})"})
        return None  # go on with the WebSocket handshake

    # ----------------------------------------------------------------------------- WebSocket side
    async def _handle_connection(self, ws: ServerConnection) -> None:
        session = ClientSession(peer=f"{ws.remote_address}", state=self.client_state.new_client())
        self.sessions[session.id] = session
        log.info("client %d (%s) connected", session.id, session.peer)
        try:
            await ws.send(self._metadata_frame)
            async for frame in ws:
                start = time.monotonic()
                try:
                    reply = await self._answer(ws, session, frame)
                    if reply is None:  # the client left while its request was queued
                        break
                    await ws.send(self._encode_reply(reply))
                finally:
                    self._leave_flight(session)
                session.prev_total_ms = (time.monotonic() - start) * 1000.0
        except websockets.ConnectionClosed:
            pass
        finally:
            self._leave_flight(session)
            self.sessions.pop(session.id, None)
            log.info("client %d disconnected after %d request(s)", session.id, session.requests)

    def _encode_reply(self, reply: dict[str, Any]) -> bytes | str:
        if "error" in reply and self.config.error_frames == "text":
            return f"{reply['error_type']}: {reply['error']}"
        return packb(reply)

    def _enter_flight(self, session: ClientSession) -> None:
        self._in_flight.add(session.id)
        self._idle.clear()

    def _leave_flight(self, session: ClientSession) -> None:
        self._in_flight.discard(session.id)
        if not self._in_flight:
            self._idle.set()

    async def _answer(self, ws: ServerConnection, session: ClientSession, frame: bytes | str) -> dict | None:
        """The reply for one frame (never raises for bad input); None if the client is gone."""
        session.requests += 1
        try:
            request = parse_request(frame, self.spec)
            if self._draining:
                raise RequestError("shutting_down", "server is shutting down; no new requests are started")
            queued = time.monotonic()
            async with self._lock:
                if ws.state is not State.OPEN:
                    return None
                if self._draining:
                    raise RequestError("shutting_down", "server is shutting down; no new requests are started")
                self._enter_flight(session)
                queue_ms = (time.monotonic() - queued) * 1000.0
                reply = await self._loop.run_in_executor(self._executor, self._run_policy, session, request)
            reply["server_timing"]["queue_ms"] = queue_ms
            if session.prev_total_ms is not None:
                reply["server_timing"]["prev_total_ms"] = session.prev_total_ms
            return reply
        except RequestError as e:
            return self._error(session, e.kind, str(e))
        except Exception as e:  # a bug: log it, tell the client, keep serving everyone else
            log.error("client %d: internal error\n%s", session.id, traceback.format_exc())
            return self._error(session, "internal_error", f"{type(e).__name__}: {e}")

    def _error(self, session: ClientSession, kind: str, message: str) -> dict[str, Any]:
        session.errors += 1
        self.counts[kind] += 1
        log.warning("client %d: %s: %s", session.id, kind, message)
        return error_reply(kind, message)

    def _run_policy(self, session: ClientSession, request: Request) -> dict[str, Any]:
        """Runs in the single policy thread: swap this client's state in, infer, snapshot it."""
        if request.reset:
            session.new_episode()
        self.client_state.restore(session.state)
        if request.reset:
            self.policy.reset()  # whatever else the policy does at an episode start
            self.counts["reset"] += 1
        if request.obs is None:
            session.state = self.client_state.capture()
            return {"reset": True, "server_timing": {"infer_ms": 0.0}}
        t0 = time.perf_counter()
        try:
            out = self.policy.infer(request.obs)
        except _POLICY_REJECTIONS as e:
            # session.state is left as it was: a failed call neither half-calibrates nor draws noise
            raise RequestError("policy_error", f"{type(e).__name__}: {e}") from e
        infer_ms = (time.perf_counter() - t0) * 1000.0
        out = check_policy_output(out, self.action_dim)
        session.state = self.client_state.capture()
        session.steps += 1
        self.counts["infer"] += 1
        return {"actions": out["actions"], "server_timing": {"infer_ms": infer_ms}}


class ServerThread:
    """Run a :class:`PolicyServer` in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, server: PolicyServer, timeout: float = 30.0):
        self.server = server
        self._thread = threading.Thread(target=self._serve, name="policy-server", daemon=True)
        self._timeout = timeout
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.serve_forever()
        except BaseException as e:  # e.g. port in use: hand it to start() instead of hanging
            self.error = e
            self.server.ready.set()

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.server.port}"

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self.server.ready.wait(self._timeout):
            raise RuntimeError("policy server did not start in time")
        if self.error is not None:
            raise RuntimeError(f"policy server failed to start: {self.error}") from self.error
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise RuntimeError("policy server did not stop in time")

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["PolicyServer", "ServerConfig", "ServerThread", "PROTOCOL"]
