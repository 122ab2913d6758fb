"""On-robot policy server, wire-compatible with openpi-client (``python -m vla_ttq.serve``)."""

from .codec import DecodeError, packb, unpackb
from .protocol import ERROR_TYPES, ObservationSpec, Request, RequestError, parse_request, validate_request
from .server import PolicyServer, ServerConfig, ServerThread
from .sessions import ClientSession, ClientState, ClientStateAccess

__all__ = ["DecodeError", "packb", "unpackb", "ERROR_TYPES", "ObservationSpec", "Request", "RequestError",
           "parse_request", "validate_request", "PolicyServer", "ServerConfig", "ServerThread", "ClientSession",
           "ClientState", "ClientStateAccess"]
