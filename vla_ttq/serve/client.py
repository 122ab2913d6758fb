"""``RemotePolicy``: the policy contract over the network, on top of openpi-client.

Used by the LIBERO runner's ``--server ws://host:port``. Each ``env_index`` gets its own
connection, so each simulated environment has its own TTQ episode state on the server, exactly
like ``infer_batch`` with ``stats_scope="sample"`` locally.
"""

from __future__ import annotations

from typing import Any


class RemotePolicyError(RuntimeError):
    """The server answered with an error reply (``kind`` is its ``error_type``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"policy server error ({kind}): {message}")
        self.kind = kind


def _client_class():
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy
    except ImportError as e:  # numpy<2 pin on PyPI: install it without its deps
        raise ImportError("RemotePolicy needs openpi-client: pip install --no-deps openpi-client==0.1.2 "
                          "(its runtime needs only msgpack, websockets, typing_extensions)") from e
    return WebsocketClientPolicy


def _check(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise RemotePolicyError("bad_reply", f"expected a map, got {type(reply).__name__}")
    if "error" in reply:
        raise RemotePolicyError(str(reply.get("error_type", "error")), str(reply["error"]))
    return reply


class RemotePolicy:
    """Implements ``infer`` / ``infer_batch`` / ``reset`` / ``metadata`` against a policy server."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url = url if url.startswith(("ws://", "wss://")) else f"ws://{url}"
        self._api_key = api_key
        self._clients: dict[int, Any] = {}
        self.last_server_timing: dict[str, float] | None = None
        self.metadata: dict[str, Any] = self._client(0).get_server_metadata()

    def _client(self, env_index: int):
        if env_index not in self._clients:
            self._clients[env_index] = _client_class()(self.url, api_key=self._api_key)
        return self._clients[env_index]

    def _call(self, env_index: int, message: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = _check(self._client(env_index).infer(message))
        except RuntimeError as e:
            if isinstance(e, RemotePolicyError):
                raise
            raise RemotePolicyError("text_error", str(e)) from e  # server runs with --error-frames text
        self.last_server_timing = reply.pop("server_timing", None)
        return reply

    def infer(self, obs: dict[str, Any], env_index: int = 0) -> dict[str, Any]:
        return self._call(env_index, obs)

    def infer_batch(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._call(i, obs) for i, obs in enumerate(observations)]

    def reset(self, env_index: int | None = None) -> None:
        """Start a new episode on the server for one environment (or all connected ones)."""
        targets = list(self._clients) if env_index is None else [env_index]
        for i in targets:
            self._call(i, {"reset": True})

    def close(self) -> None:
        for client in self._clients.values():
            client._ws.close()  # openpi-client has no public close()
        self._clients.clear()

    def __enter__(self) -> "RemotePolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["RemotePolicy", "RemotePolicyError"]
