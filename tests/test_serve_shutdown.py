"""SIGTERM on the server process: the request in flight is answered, then every connection is
closed (1001 going away) and the process exits 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websockets
import websockets.sync.client as ws_client
from contract_obs import make_obs

from vla_ttq.serve import codec

TESTS = Path(__file__).parent
STARTUP_S = 240  # imports torch; generous for a loaded 2-core CI machine


class ServerProcess:
    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "vla_ttq.serve", "--host", "127.0.0.1", "--port", "0",
                                      *args], stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS.parent)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.log.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"server never logged {pattern!r}; log:\n{''.join(self.log)}")

    def url(self) -> str:
        port = self.wait_for(r"serving on ws://127\.0\.0\.1:(\d+)", STARTUP_S).group(1)
        return f"ws://127.0.0.1:{port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_process():
    procs = []

    def start(*args):
        procs.append(ServerProcess(*args))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server_process):
    srv = server_process("--factory", "serve_double:slow_policy")
    url = srv.url()
    with ws_client.connect(url) as a, ws_client.connect(url) as b:
        a.recv(), b.recv()
        a.send(codec.packb(make_obs(1)))  # takes 1.5 s on the server
        time.sleep(0.4)
        b.send(codec.packb(make_obs(2)))  # queued behind a
        time.sleep(0.1)
        srv.proc.send_signal(signal.SIGTERM)
        reply = codec.unpackb(a.recv(timeout=30))
        assert reply["actions"].shape == (10, 7)  # the request in flight was finished
        with pytest.raises(websockets.ConnectionClosed) as closed:
            a.recv(timeout=30)
        assert closed.value.rcvd.code == 1001
        try:  # the queued request is not started: an explicit refusal, or the close
            late = codec.unpackb(b.recv(timeout=30))
            assert late["error_type"] == "shutting_down"
        except websockets.ConnectionClosed as e:
            assert e.rcvd.code == 1001
    assert srv.proc.wait(timeout=60) == 0
    srv.wait_for(r"server stopped", 5)
    assert any("SIGTERM: finishing the request in flight" in line for line in srv.log)


def test_bad_cli_arguments_exit_2_with_a_clear_message():
    out = subprocess.run([sys.executable, "-m", "vla_ttq.serve", "--factory", "no_colon_here"],
                         capture_output=True, text=True, cwd=TESTS.parent, timeout=STARTUP_S)
    assert out.returncode == 2 and "--factory must look like 'package.module:callable'" in out.stderr
