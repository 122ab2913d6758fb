"""``python -m vla_ttq.serve --policy PATH_OR_HUB_ID --method ttq --bits 4``: serve a policy.

Wire-compatible with openpi-client's ``WebsocketClientPolicy``; see docs/serve.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

from ..config import METHODS
from .build import PolicySpec, build_policy, quant_config
from .server import PolicyServer, ServerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vla_ttq.serve", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("policy")
    src.add_argument("--policy", help="hub id, local checkpoint dir, or 'tiny' (random tiny pi0.5, for tests)")
    src.add_argument("--factory", help="'module:callable' returning any object implementing the policy contract")
    src.add_argument("--device", default="cpu")
    src.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: loader's)")
    src.add_argument("--quantize-expert", action="store_true", help="also quantize the action expert")
    src.add_argument("--n-action-steps", type=int, default=None)
    src.add_argument("--calibration", default=None, help="activation statistics file (needed by AWQ)")
    src.add_argument("--seed", type=int, default=0, help="seed of the tiny checkpoint")
    src.add_argument("--fast", action="store_true", help="fast sampler: static KV cache, CUDA graphs on a GPU")
    q = p.add_argument_group("quantization (flags override --quant-config)")
    q.add_argument("--quant-config", default=None, help="QuantConfig YAML")
    q.add_argument("--method", choices=METHODS, default=None)
    q.add_argument("--bits", type=int, default=None)
    q.add_argument("--group", type=int, default=None)
    q.add_argument("--rank", type=int, default=None)
    q.add_argument("--recompute", choices=("call", "episode"), default=None,
                   help="TTQ: re-quantize every call, or once per (client) episode")
    q.add_argument("--stats-scope", choices=("batch", "sample"), default=None)
    q.add_argument("--backend", default=None)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    s.add_argument("--port", type=int, default=8000, help="0: pick a free port (logged)")
    s.add_argument("--max-clients", type=int, default=16)
    s.add_argument("--max-message-mb", type=float, default=32.0)
    s.add_argument("--error-frames", choices=("map", "text"), default="map",
                   help="map: {'error', 'error_type'} reply; text: text frame (openpi-client raises RuntimeError)")
    s.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


class _StopBeforeServing(Exception):
    pass


def _stop_while_loading(signum, frame):
    raise _StopBeforeServing(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Loading can take minutes: SIGTERM then just stops cleanly (the server installs its own
    # handler that finishes the request in flight once it is up).
    signal.signal(signal.SIGTERM, _stop_while_loading)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    log = logging.getLogger("vla_ttq")
    log.setLevel(args.log_level.upper())
    try:
        quant = quant_config(args.method, {"bits": args.bits, "group": args.group, "rank": args.rank,
                                           "recompute": args.recompute, "stats_scope": args.stats_scope,
                                           "backend": args.backend}, args.quant_config)
        server_cfg = ServerConfig(host=args.host, port=args.port, max_clients=args.max_clients,
                                  max_message_mb=args.max_message_mb, error_frames=args.error_frames)
        server_cfg.validate()
        spec = PolicySpec(policy=args.policy, factory=args.factory, device=args.device, dtype=args.dtype,
                          quantize_expert=args.quantize_expert, n_action_steps=args.n_action_steps,
                          calibration=args.calibration, seed=args.seed, fast=args.fast)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.factory and quant is not None:
        log.warning("--factory builds its own policy: quantization flags are ignored")
    with contextlib.ExitStack() as stack:
        try:
            log.info("loading policy %s (quant: %s)", args.policy or args.factory, quant)
            policy = build_policy(spec, quant, stack)
            server = PolicyServer(policy, server_cfg)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except _StopBeforeServing as e:
            log.info("%s while loading: exiting", e)
            return 0
        server.serve_forever()  # returns after SIGTERM/SIGINT once the request in flight is answered
    return 0


if __name__ == "__main__":
    sys.exit(main())
