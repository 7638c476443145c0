"""Odd, careless and hostile clients against a real server with small limits: every request it cannot
serve gets a 4xx with an OpenAI error object and one log line, and every resource a client can hold
(connections, header and body time, queue wait, running time, rows) is bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from serving import KEY, MODEL, metrics, raw, running_server, send_raw_request

REQUEST_TIMEOUT = 0.4  # s; 240 tokens of the tiny pair take about 1 s, 16 about 0.06 s
LIMITS = {
    "-k": "3",
    "--max-tokens-limit": "240",
    "--max-n": "2",
    "--max-batch-rows": "2",
    "--max-rows": "3",
    "--max-pending": "8",
    "--request-timeout": str(REQUEST_TIMEOUT),
    "--max-queue-wait": "0.2",
    "--header-timeout": "1.5",
    "--body-timeout": "1.0",
    "--max-connections": "6",
}
LONG = {"model": MODEL, "prompt": "hello world", "max_tokens": 240, "temperature": 0}


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    options = [x for kv in LIMITS.items() for x in kv]
    with running_server(model_dirs, tmp_path_factory.mktemp("hostile") / "server.log", *options) as server:
        yield server


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "def f(x):", "max_tokens": 8, "temperature": 0} | fields


BAD = {  # each once answered 500 with a traceback
    "nested 100000 deep": b'{"model": "tiny", "prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested 5000 deep": b'{"model": "tiny", "prompt": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "integer of 5000 digits": b'{"model": "tiny", "prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",
    "seed beyond 64 bits": completion(seed=2**70),
    "negative seed": completion(seed=-1),
    "seed + n beyond 64 bits": completion(seed=2**64 - 1, n=2, temperature=1),
    "lone surrogate in the prompt": b'{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 3}',
    "lone surrogate in a stop string": b'{"model": "tiny", "prompt": "ab", "stop": "\\udc00", "max_tokens": 3}',
    "lone surrogate in a chat": b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udc00"}]}',
    "token ids as booleans": completion(prompt=[True, False]),
    "token ids as floats": completion(prompt=[5.0, 6.5]),
    "max_tokens as a float": completion(max_tokens=2.0),
    "K beyond the server's limit": completion(num_speculative_tokens=10**12),
}
CHATS = {
    "roles that do not alternate": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "a system message after the first": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
}


@pytest.mark.parametrize("case", BAD)
def test_bad_bodies_get_400_and_one_log_line(server, case):
    status, reply = raw(server, "/v1/completions", BAD[case])
    assert status == 400, reply
    assert set(reply) == {"error"} and reply["error"]["type"] == "invalid_request_error"
    log = server["log"].read_text()
    assert "Traceback" not in log and reply["error"]["message"] in log


@pytest.mark.parametrize("case", CHATS)
def test_a_chat_the_template_refuses_gets_400(server, case):
    status, reply = raw(server, "/v1/chat/completions", {"model": MODEL, "messages": CHATS[case], "max_tokens": 4})
    assert status == 400 and "chat template refuses" in reply["error"]["message"], reply


def test_a_streamed_request_that_cannot_run_fails_before_the_stream_starts(server):
    """n > 1 and streaming: a seed that does not fit fails with 400 before any 200 or chunk."""
    body = completion(seed=2**64 - 1, n=2, temperature=1, stream=True)
    status, reply = raw(server, "/v1/completions", body)
    assert status == 400 and "seed" in reply["error"]["message"]


def test_made_up_paths_add_no_metric_series(server):
    for i in range(30):
        raw(server, f"/made/up/{i}", b"{}", key=None)
    endpoints = {key.split('endpoint="')[1].split('"')[0] for key in metrics(server) if "requests_total{" in key}
    assert endpoints <= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics", "other"}
    assert metrics(server)['specdecode_requests_total{endpoint="other",status="404"}'] >= 30


def test_a_request_past_its_deadline_gets_408(server):
    start = time.monotonic()
    status, reply = raw(server, "/v1/completions", LONG)
    assert status == 408 and reply["error"]["type"] == "timeout_error", reply
    assert time.monotonic() - start < REQUEST_TIMEOUT + 0.5


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_is_counted(server):
    before = metrics(server).get('specdecode_requests_total{endpoint="/v1/completions",status="408"}', 0)
    with send_raw_request(server, LONG | {"stream": True}) as sock:
        received = b""
        while part := sock.recv(65536):
            received += part
            if b'"error"' in received:
                break
    assert received.startswith(b"HTTP/1.1 200") and b"data: {" in received
    events = [json.loads(line[6:]) for line in received.split(b"\r\n") if line.startswith(b"data: {")]
    assert events[-1]["error"]["type"] == "timeout_error" and "choices" in events[0]
    after = metrics(server)['specdecode_requests_total{endpoint="/v1/completions",status="408"}']
    assert after == before + 1


def test_queue_wait_and_rows_are_bounded(server):
    """A long request fills the batch (2 rows): the next one waits in the queue and, having waited longer
    than --max-queue-wait, gets 429 when its turn comes; one more finds no room among the 3 rows the
    server holds and gets 429 at once."""
    results = {}
    first = threading.Thread(target=lambda: results.update(first=raw(server, "/v1/completions", LONG | {"n": 2})))
    first.start()
    time.sleep(0.05)
    queued = threading.Thread(target=lambda: results.update(queued=raw(server, "/v1/completions", completion())))
    queued.start()
    time.sleep(0.05)
    results["rows"] = raw(server, "/v1/completions", completion())
    first.join()
    queued.join()
    assert results["rows"][0] == 429 and "choices" in results["rows"][1]["error"]["message"]
    assert results["queued"][0] == 429 and "queue" in results["queued"][1]["error"]["message"]
    assert results["first"][0] == 408
    assert raw(server, "/v1/completions", completion())[0] == 200  # every slot was given back


def test_slow_clients_are_dropped_while_others_are_served(server):
    """Three connections send their headers a byte every 0.2 s: each is closed after --header-timeout
    (1.5 s) while normal requests keep being answered."""
    dropped_after = []

    def slow_client():
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server["port"])) as sock:
            try:
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                pass
            else:
                sock.settimeout(5)
                assert sock.recv(1) == b""  # closed by the server
            dropped_after.append(time.monotonic() - start)

    slow = [threading.Thread(target=slow_client) for _ in range(3)]
    for t in slow:
        t.start()
    served = [raw(server, "/v1/completions", completion())[0] for _ in range(5)]
    for t in slow:
        t.join()
    assert served == [200] * 5
    assert len(dropped_after) == 3 and all(1.4 < s < 4 for s in dropped_after), dropped_after


def test_a_body_that_does_not_arrive_gets_408(server):
    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":'.encode()
        )
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 408")


def test_connections_are_bounded(server):
    """With --max-connections (6) connections open, another request gets 503; once they close, 200."""
    idle = [socket.create_connection(("127.0.0.1", server["port"])) for _ in range(6)]
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server["base"] + "/health", timeout=5)
        assert refused.value.code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert raw(server, "/v1/completions", completion())[0] == 200


def test_listening_beyond_loopback_needs_a_key_or_a_flag(model_dirs, capsys, monkeypatch):
    from specdecode.cli import main
    from specdecode.server.http import is_loopback

    monkeypatch.delenv("SPECDECODE_API_KEY", raising=False)
    assert main(["serve", "--target", str(model_dirs[0]), "--host", "0.0.0.0"]) == 2
    assert "--allow-no-api-key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("no-such-host.invalid")
