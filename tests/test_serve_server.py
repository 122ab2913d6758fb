"""The policy server against the REAL openpi-client, with the contract test double (serve_double).

End-to-end tests with the tiny pi0.5 checkpoint are in test_serve_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets
import websockets.sync.client as ws_client
from contract_obs import make_obs
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_double import DoublePolicy

from vla_ttq.serve import PolicyServer, ServerConfig, ServerThread, codec
from vla_ttq.serve.client import RemotePolicy, RemotePolicyError

# openpi-client 0.1.2 calls websockets' sync connect() outside a context manager (deprecated in 14+)
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


@pytest.fixture
def served():
    """A server on a free loopback port; yields (ServerThread, the policy it serves)."""
    started = []

    def start(policy=None, **cfg):
        policy = policy or DoublePolicy()
        st = ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0, **cfg))).start()
        started.append(st)
        return st, policy

    yield start
    for st in started:
        st.stop()


RESET = "reset"


def replay(steps: list) -> list[np.ndarray]:
    """What a client's own freshly loaded policy answers to its history (observations and RESETs)."""
    pol = DoublePolicy()
    out = []
    for step in steps:
        if step is RESET:
            pol.reset()
        else:
            out.append(pol.infer(step)["actions"])
    return out


def test_openpi_client_gets_metadata_actions_and_timing(served):
    st, _ = served()
    client = WebsocketClientPolicy(st.url)
    meta = client.get_server_metadata()
    assert meta["policy_id"] == "test-double" and meta["server"]["protocol"].startswith("openpi-websocket-msgpack")
    assert meta["server"]["per_client_state"] is True
    obs = [make_obs(1), make_obs(2)]
    first, second = client.infer(obs[0]), client.infer(obs[1])
    ref = replay(obs)
    for got, want in zip((first, second), ref):
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (10, 7)
        np.testing.assert_array_equal(got["actions"], want)
    assert first["server_timing"]["infer_ms"] > 0 and "prev_total_ms" not in first["server_timing"]
    assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]


def test_bad_requests_get_error_replies_and_the_connection_keeps_working(served):
    st, policy = served()
    client = WebsocketClientPolicy(st.url)
    nan_state = make_obs(5)
    nan_state["observation/state"][3] = np.nan
    cases = [
        (nan_state, "invalid_observation", "NaN"),
        ({k: v for k, v in make_obs(5).items() if k != "observation/wrist_image"}, "invalid_observation", "wrist_image"),
        ({**make_obs(5), "observation/image": np.zeros((8, 8, 4), np.uint8)}, "invalid_observation", "(H, W, 3)"),
        (make_obs(5, prompt="please refuse"), "policy_error", "refuses"),
        ([1, 2], "bad_message", "map"),
    ]
    for msg, kind, text in cases:
        reply = client.infer(msg)
        assert reply["error_type"] == kind and text in reply["error"], reply
    # a good request after all that: the failed ones did not start (calibrate) the episode
    good = client.infer(make_obs(6))
    np.testing.assert_array_equal(good["actions"], replay([make_obs(6)])[0])
    assert st.server.counts["invalid_observation"] == 3 and st.server.counts["policy_error"] == 1


def test_text_error_frames_make_openpi_client_raise(served):
    st, _ = served(error_frames="text")
    client = WebsocketClientPolicy(st.url)
    with pytest.raises(RuntimeError, match="invalid_observation: missing key"):
        client.infer({"prompt": "x"})
    assert client.infer(make_obs(1))["actions"].shape == (10, 7)  # still connected


def test_clients_keep_separate_ttq_episodes_and_noise(served):
    st, _ = served()
    a, b = WebsocketClientPolicy(st.url), WebsocketClientPolicy(st.url)
    seq_a = [make_obs(10, "open the drawer"), make_obs(11, "open the drawer")]
    seq_b = [make_obs(20, "put the bowl on the plate"), make_obs(21, "put the bowl on the plate")]
    got_a, got_b = [], []
    for oa, ob in zip(seq_a, seq_b):  # interleaved: A, B, A, B
        got_a.append(a.infer(oa)["actions"])
        got_b.append(b.infer(ob)["actions"])
    for got, want in zip(got_a + got_b, replay(seq_a) + replay(seq_b)):
        np.testing.assert_array_equal(got, want)
    # the check can fail: sharing one policy state, B's answers would be these instead
    shared = replay([seq_a[0], seq_b[0], seq_a[1], seq_b[1]])
    assert not np.array_equal(shared[1], got_b[0]) and not np.array_equal(shared[3], got_b[1])


def test_reset_starts_a_new_episode_for_that_client_only(served):
    st, _ = served()
    a, b = WebsocketClientPolicy(st.url), WebsocketClientPolicy(st.url)
    o1, o2, o3 = make_obs(1), make_obs(2), make_obs(3)
    got_a = [a.infer(o1)["actions"]]
    got_b = [b.infer(o3)["actions"]]
    ack = a.infer({"reset": True})
    assert ack["reset"] is True and "server_timing" in ack
    got_a.append(a.infer(o2)["actions"])
    got_a.append(a.infer({**o3, "reset": True})["actions"])  # reset inside an observation
    got_b.append(b.infer(o1)["actions"])  # B's episode is untouched by A's resets
    want_a = replay([o1, RESET, o2, RESET, o3])
    for got, want in zip(got_a + got_b, want_a + replay([o3, o1])):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got_a[1], replay([o1, o2])[1])  # the reset did change the answer
    assert st.server.counts["reset"] == 2


def test_requests_from_many_clients_never_overlap(served):
    st, policy = served(DoublePolicy(delay_s=0.02))
    errors = []

    def worker(i):
        try:
            c = WebsocketClientPolicy(st.url)
            for k in range(3):
                assert c.infer(make_obs(100 * i + k))["actions"].shape == (10, 7)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and policy.calls == 18 and policy.max_active == 1


def test_healthz_and_too_many_clients(served):
    st, _ = served(max_clients=2)
    url = f"http://127.0.0.1:{st.server.port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert r.status == 200 and body["status"] == "ok" and body["policy"] == "test-double"
    c1, c2 = WebsocketClientPolicy(st.url), WebsocketClientPolicy(st.url)
    with pytest.raises(websockets.InvalidStatus, match="503"):
        WebsocketClientPolicy(st.url)
    with urllib.request.urlopen(url, timeout=5) as r:
        assert json.loads(r.read())["clients"] == 2
    c1._ws.close()
    time.sleep(0.2)
    assert WebsocketClientPolicy(st.url).infer(make_obs(0))["actions"].shape == (10, 7)
    assert c2.infer(make_obs(0))["actions"].shape == (10, 7)


def test_oversized_frame_closes_only_that_connection(served):
    st, _ = served(max_message_mb=0.01)
    with ws_client.connect(st.url, max_size=None) as raw:
        raw.recv()
        raw.send(codec.packb({**make_obs(0, side=128)}))  # ~100 KB > 10 KB
        with pytest.raises(websockets.ConnectionClosed) as closed:
            raw.recv(timeout=5)
    assert closed.value.rcvd.code == 1009
    assert WebsocketClientPolicy(st.url).infer(make_obs(0))["actions"].shape == (10, 7)


def test_client_dropping_mid_request_hurts_nobody(served):
    st, policy = served(DoublePolicy(delay_s=0.3))
    with ws_client.connect(st.url) as raw:
        raw.recv()
        raw.send(codec.packb(make_obs(1)))  # in flight for 0.3 s ...
        time.sleep(0.05)
    # ... and gone before the reply
    with ws_client.connect(st.url) as queued:
        queued.recv()
        queued.send(codec.packb(make_obs(2)))  # waits behind the first, then leaves
    other = WebsocketClientPolicy(st.url)
    got = other.infer(make_obs(3))["actions"]
    np.testing.assert_array_equal(got, replay([make_obs(3)])[0])
    assert policy.max_active == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{st.server.port}/healthz", timeout=5) as r:
        assert json.loads(r.read())["counts"]["internal_error"] == 0


def test_remote_policy_implements_the_contract(served):
    st, _ = served()
    with RemotePolicy(st.url) as remote:
        assert remote.metadata["action_dim"] == 7
        ep0 = [make_obs(1), make_obs(2)]
        ep1 = [make_obs(3), make_obs(4)]
        first = remote.infer_batch([ep0[0], ep1[0]])  # env 0 and env 1: separate connections
        second = remote.infer_batch([ep0[1], ep1[1]])
        assert set(first[0]) == {"actions"} and remote.last_server_timing["infer_ms"] > 0
        for got, want in zip([first[0], second[0]], replay(ep0)):
            np.testing.assert_array_equal(got["actions"], want)
        for got, want in zip([first[1], second[1]], replay(ep1)):
            np.testing.assert_array_equal(got["actions"], want)
        remote.reset(env_index=1)
        np.testing.assert_array_equal(remote.infer(ep0[0], env_index=1)["actions"],
                                      replay([*ep1, RESET, ep0[0]])[2])
        with pytest.raises(RemotePolicyError, match="invalid_observation"):
            remote.infer({"prompt": "x"})
