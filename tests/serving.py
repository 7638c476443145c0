"""`specdecode serve` in a subprocess on a free loopback port, and raw HTTP to it (test helpers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

KEY = "test-key"
MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dirs, log_path: Path, *options: str):
    """{"base": URL, "log": path, "port": int} of a server for the tiny pair with the API key `KEY`."""
    target, draft = map(str, model_dirs)
    port = free_port()
    args = ["serve", "--target", target, "--draft", draft, "--port", str(port), "--api-key", KEY]
    args += ["--served-model-name", MODEL, *options]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "specdecode", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the server did not start:\n" + log_path.read_text())
    try:
        yield {"base": base, "log": log_path, "port": port, "process": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def raw(server, path, body: bytes | dict | None = None, key: str | None = KEY, method: str = "POST", timeout=60):
    """(status, JSON body) of a raw HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(server["base"] + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def metrics(server) -> dict[str, float]:
    """The server's Prometheus samples: {'name{labels}': value}."""
    request = urllib.request.Request(server["base"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def send_raw_request(server, body: dict, path: str = "/v1/completions") -> socket.socket:
    """A socket that has sent one POST with `body`; the caller reads or closes it."""
    data = json.dumps(body)
    sock = socket.create_connection(("127.0.0.1", server["port"]))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n{data}".encode()
    )
    return sock
