"""Latency of the policy server as a client sees it: ``python -m vla_ttq.serve.bench``.

Starts the server in this process (``--policy tiny`` by default) or measures a running one
(``--url ws://host:port``), sends N LIBERO-shaped observations (two 224x224 RGB images, 8-d
state, a prompt) through openpi-client, and reports p50/p90/p99 of the round trip, of the
server's ``infer_ms`` and of the rest (serialisation + transport + queueing). Results go to
``results/serve/`` as JSON and a markdown table, with a description of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..config import config_hash, to_dict
from ..machine import cpu_model_name
from .build import PolicySpec, build_policy, quant_config
from .client import RemotePolicy
from .server import PolicyServer, ServerConfig, ServerThread

PERCENTILES = (50, 90, 99)


def machine_info() -> dict[str, Any]:
    cpu = cpu_model_name() or platform.processor() or platform.machine()
    info = {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    with contextlib.suppress(ImportError):
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return info


def make_observations(n: int, side: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"observation/image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
             "observation/wrist_image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
             "observation/state": rng.normal(size=8).astype(np.float32),
             "prompt": "put the black bowl on the plate"} for _ in range(n)]


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in PERCENTILES},
            "max": float(a.max()), "n": int(a.size)}


def run_client(url: str, observations: list[dict], warmup: int, episode_len: int, rows: list[dict]) -> None:
    with RemotePolicy(url) as remote:
        for i, obs in enumerate(observations):
            if episode_len and i % episode_len == 0:
                remote.reset()
            t0 = time.perf_counter()
            out = remote.infer(obs)
            rtt = (time.perf_counter() - t0) * 1000.0
            if out["actions"].ndim != 2:
                raise RuntimeError(f"unexpected actions shape {out['actions'].shape}")
            if i >= warmup:
                timing = remote.last_server_timing or {}
                rows.append({"rtt_ms": rtt, "infer_ms": timing.get("infer_ms", float("nan")),
                             "queue_ms": timing.get("queue_ms", 0.0)})


def benchmark(url: str, requests: int, warmup: int, clients: int, image_side: int, episode_len: int) -> dict:
    per_client = max(1, requests // clients)
    rows: list[dict] = []
    threads = [threading.Thread(target=run_client, args=(url, make_observations(per_client + warmup, image_side, c),
                                                         warmup, episode_len, rows)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not rows:
        raise RuntimeError("no request was measured (did the clients fail? see the log)")
    rtt = [r["rtt_ms"] for r in rows]
    infer = [r["infer_ms"] for r in rows]
    other = [r["rtt_ms"] - r["infer_ms"] for r in rows]
    return {"round_trip_ms": summarise(rtt), "server_infer_ms": summarise(infer),
            "overhead_ms": summarise(other), "queue_ms": summarise([r["queue_ms"] for r in rows]),
            "throughput_rps": len(rows) / wall}


def markdown(result: dict) -> str:
    lines = [f"# Policy server latency ({result['label']})", "",
             f"Machine: {result['machine']['cpu']} x{result['machine']['cpu_count']} "
             f"(torch {result['machine'].get('torch')}, {result['machine'].get('torch_threads')} threads, "
             f"GPU: {result['machine'].get('gpu')}); {result['settings']['clients']} client(s), "
             f"{result['stats']['round_trip_ms']['n']} measured requests after {result['settings']['warmup']} warm-up, "
             f"images {result['settings']['image_side']}², {result['timestamp']}.", "",
             "| metric | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
    for key in ("round_trip_ms", "server_infer_ms", "overhead_ms", "queue_ms"):
        s = result["stats"][key]
        lines.append(f"| {key} | {s['mean']:.2f} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['max']:.2f} |")
    lines += ["", f"Throughput: {result['stats']['throughput_rps']:.2f} requests/s."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vla_ttq.serve.bench", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", help="measure a running server instead of starting one")
    p.add_argument("--policy", default=None, help="hub id, path or 'tiny' (default: tiny unless --factory/--url)")
    p.add_argument("--factory", help="'module:callable' building the policy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--quant-config", default=None)
    p.add_argument("--method", default="ttq")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--recompute", choices=("call", "episode"), default=None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="per client, not measured")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--image-side", type=int, default=224)
    p.add_argument("--episode-len", type=int, default=0, help="reset every N requests (0: one episode)")
    p.add_argument("--out", default="results/serve")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quant = None if (args.factory or args.url) else quant_config(
        args.method, {"bits": args.bits, "group": args.group, "rank": args.rank, "recompute": args.recompute},
        args.quant_config)
    settings = {k: getattr(args, k) for k in ("requests", "warmup", "clients", "image_side", "episode_len")}
    label = args.url or args.factory or args.policy or "tiny"
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            spec = PolicySpec(policy=None if args.factory else (args.policy or "tiny"), factory=args.factory,
                              device=args.device, dtype=args.dtype)
            policy = build_policy(spec, quant, stack)
            url = stack.enter_context(ServerThread(PolicyServer(policy, ServerConfig(port=0)))).url
            if not args.factory:
                label = f"{label}, {'fp' if quant is None else f'{quant.method} {quant.bits}-bit g{quant.group}'}"
        stats = benchmark(url, args.requests, args.warmup, args.clients, args.image_side, args.episode_len)
    result = {"label": label, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "settings": settings,
              "quant": None if quant is None else to_dict(quant), "stats": stats}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{config_hash(result['settings'] | {'label': label, 'quant': result['quant']})}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"saved {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
