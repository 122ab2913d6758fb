"""Bounded fuzz + load test on loopback: malformed payloads from many concurrent clients.

Every good request must be answered with the same actions a fresh local policy gives for that
client's own episode (so no state leaks between clients under load), every bad one with an error
reply, and the server must still be healthy at the end.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import websockets.sync.client as ws_client
from contract_obs import make_obs
from serve_double import DoublePolicy

from vla_ttq.serve import PolicyServer, ServerConfig, ServerThread, codec

N_CLIENTS, N_REQUESTS, TIME_LIMIT_S = 8, 12, 120.0


def malformed_frames(rng: np.random.Generator) -> list[bytes | str]:
    good = codec.packb(make_obs(0))
    nan = make_obs(1)
    nan["observation/state"][int(rng.integers(8))] = np.nan
    lying = {**make_obs(2)}
    lying["observation/image"] = {b"__ndarray__": True, b"data": b"x" * 10, b"dtype": "|u1", b"shape": [64, 64, 3]}
    return [
        rng.bytes(int(rng.integers(1, 200))),
        "a text frame",
        b"",
        codec.packb([1, 2, 3]),
        codec.packb("just a string"),
        codec.packb({"observation/img": np.zeros((4, 4, 3), np.uint8)}),
        codec.packb({**make_obs(3), "observation/image": np.zeros((4, 4, 3), np.float64)}),
        codec.packb({**make_obs(3), "observation/wrist_image": np.zeros((4, 4), np.uint8)}),
        codec.packb({**make_obs(3), "observation/state": np.zeros(9, np.float32)}),
        codec.packb(nan),
        codec.packb({**make_obs(3), "prompt": b"bytes prompt"}),
        codec.packb(lying),
        good[: len(good) // 2],  # truncated
        b"\x91" * 50_000 + b"\xc0",  # nested too deeply
    ]


def run_client(url: str, seed: int, drop_at_end: bool, results: dict, errors: list) -> None:
    rng = np.random.default_rng(seed)
    sent_good, answered = [], []
    try:
        with ws_client.connect(url, max_size=None) as ws:
            ws.recv()  # metadata
            for k in range(N_REQUESTS):
                if rng.random() < 0.5:
                    obs = make_obs(1000 * seed + k, prompt=f"task {seed}")
                    ws.send(codec.packb(obs))
                    reply = codec.unpackb(ws.recv(timeout=30))
                    assert "actions" in reply, reply
                    sent_good.append(obs)
                    answered.append(reply["actions"])
                else:
                    bad = malformed_frames(rng)
                    ws.send(bad[int(rng.integers(len(bad)))])
                    reply = codec.unpackb(ws.recv(timeout=30))
                    assert set(reply) == {"error", "error_type"} and reply["error"], reply
            if drop_at_end:
                ws.send(codec.packb(make_obs(seed)))  # leave without waiting for this one
        results[seed] = (sent_good, answered)
    except Exception as e:
        errors.append((seed, repr(e)))


def test_fuzz_and_load_on_loopback():
    policy = DoublePolicy()
    t0 = time.monotonic()
    with ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0, max_clients=N_CLIENTS + 2))) as st:
        results, errors = {}, []
        threads = [threading.Thread(target=run_client, args=(st.url, s, s % 3 == 0, results, errors))
                   for s in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIME_LIMIT_S)
        assert not errors, errors
        assert len(results) == N_CLIENTS
        time.sleep(0.3)  # let the dropped clients' last requests finish on the server
        with urllib.request.urlopen(f"http://127.0.0.1:{st.server.port}/healthz", timeout=5) as r:
            health = json.loads(r.read())
        # still serving: a brand-new client gets an answer
        with ws_client.connect(st.url) as ws:
            ws.recv()
            ws.send(codec.packb(make_obs(7)))
            assert codec.unpackb(ws.recv(timeout=30))["actions"].shape == (10, 7)

    assert health["status"] == "ok" and health["counts"]["internal_error"] == 0
    n_good = sum(len(g) for g, _ in results.values())
    n_bad = N_CLIENTS * N_REQUESTS - n_good
    assert n_good > 0 and n_bad > 0
    assert health["counts"]["bad_message"] + health["counts"]["invalid_observation"] == n_bad
    assert policy.max_active == 1
    # every client's answers equal its own fresh episode, replayed locally
    for seed, (sent, answered) in results.items():
        ref = DoublePolicy()  # the client's own freshly loaded policy
        for obs, got in zip(sent, answered):
            np.testing.assert_array_equal(got, ref.infer(obs)["actions"])
    assert time.monotonic() - t0 < TIME_LIMIT_S


def test_server_survives_abrupt_tcp_disconnects():
    policy = DoublePolicy(delay_s=0.05)
    with ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0))) as st:
        for i in range(5):
            with ws_client.connect(st.url, close_timeout=0.1) as ws:
                ws.recv()
                ws.send(codec.packb(make_obs(i)))
                ws.socket.close()  # no closing handshake at all
        with ws_client.connect(st.url) as ws:
            ws.recv()
            ws.send(codec.packb(make_obs(9)))
            assert "actions" in codec.unpackb(ws.recv(timeout=30))
        assert st.server.counts["internal_error"] == 0
    assert policy.max_active == 1
