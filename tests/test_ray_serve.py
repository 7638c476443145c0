"""specdecode on Ray Serve: a local Ray cluster, two replicas of the tiny pair, the official `openai` client
and raw HTTP through Ray's proxy."""

from __future__ import annotations

import threading
import time
import urllib.request

import openai
import pytest
from serving import KEY, MODEL, free_port
from test_server import BAD, LIMITS, PROMPT, K, assert_clear_error, expected

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from specdecode.cli import build_parser  # noqa: E402
from specdecode.cli.common import decoder_options  # noqa: E402
from specdecode.server import ServerConfig  # noqa: E402
from specdecode.server.ray_serve import Scaling, application, deployment_options  # noqa: E402

REPLICAS = 2


def replicas() -> list[str]:
    """The names of the replica actors Ray Serve runs now."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]


def wait_for_replicas(n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = serve.status().applications.get("specdecode")
        if status and status.status == "RUNNING" and len(replicas()) == n:
            states = status.deployments["specdecode"].replica_states
            if states.get("RUNNING", 0) == n:
                return
        time.sleep(0.5)
    pytest.fail(f"Ray Serve did not reach {n} running replicas: {serve.status()}")


@pytest.fixture(scope="module")
def server(model_dirs):
    target, draft = map(str, model_dirs)
    args = build_parser().parse_args(["serve", "--target", target, "--draft", draft])
    limits = {key.removeprefix("--").replace("-", "_"): int(value) for key, value in LIMITS.items()}
    limits["max_pending"] = 16  # per replica, and as many more waiting at Ray's proxy
    config = ServerConfig(model_name=MODEL, api_key=KEY, num_speculative_tokens=K, **limits)
    port = free_port()
    metrics_port = free_port()
    ray.init(
        num_cpus=REPLICAS,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(decoder_options(args), config, Scaling(replicas=REPLICAS)), name="specdecode")
        wait_for_replicas(REPLICAS)
        yield {"base": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_greedy_and_seeded_outputs_are_the_decoders(client, reference):
    """Eight requests at once (both replicas busy): greedy completions and chats, and seeded samples with
    n = 2, each equal to `SpeculativeDecoder.generate`'s output for that request alone."""
    prompts = [PROMPT, "for i in range(", "class a:", "import os"]
    results: dict[tuple, list[str]] = {}

    def ask(i: int, prompt: str, sampled: bool) -> None:
        options = dict(temperature=1.0, seed=11 * i, n=2, extra_body={"top_k": 10}) if sampled else {"temperature": 0}
        try:
            reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, **options)
            results[(i, sampled)] = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
        except openai.APIError as err:
            results[(i, sampled)] = [repr(err)]

    threads = [threading.Thread(target=ask, args=(i, p, s)) for i, p in enumerate(prompts) for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, prompt in enumerate(prompts):
        assert results[(i, False)] == [expected(reference, prompt, 16).text]
        samples = [expected(reference, prompt, 16, temperature=1.0, top_k=10, seed=11 * i + c).text for c in (0, 1)]
        assert results[(i, True)] == samples
    chat = [{"role": "user", "content": "write a loop"}]
    stream = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == (
        expected(reference, chat, 12).text
    )


def test_every_replicas_metrics_reach_rays_metrics_port(server, client):
    """Generated tokens and acceptance, per replica, on the port Prometheus scrapes."""
    for _ in range(4):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    deadline, found = time.time() + 60, {}
    while time.time() < deadline:
        text = urllib.request.urlopen(server["metrics"], timeout=10).read().decode()
        found = {
            line.split("{")[0]: line
            for line in text.splitlines()
            if line.startswith(("ray_specdecode_generation_tokens", "ray_specdecode_spec_decode_acceptance_rate"))
        }
        if len(found) == 2:
            break
        time.sleep(1)
    assert len(found) == 2, found
    assert all('replica="' in line and 'deployment="specdecode"' in line for line in found.values())


@pytest.mark.parametrize("case", BAD)
def test_errors_are_those_of_specdecode_serve(server, case):
    """The same statuses and error bodies as the standalone server's (tests/test_server.py)."""
    assert_clear_error(server, case)


def test_a_killed_replica_is_replaced_and_no_request_is_lost_or_answered_twice(server, client, reference):
    """Twelve long requests (four streamed) over both replicas; the busier replica's process is killed once
    every stream has its first tokens. Each request gets one answer: its full greedy output or, on the
    killed replica, HTTP 500 from Ray's proxy (not streamed) or a connection closed before the end of the
    response (streamed; the client raises APIConnectionError). Ray retries neither. Ray Serve starts a new
    replica, after which requests succeed again."""
    reference.reset()
    want = reference.generate(PROMPT, 200, num_speculative_tokens=K, ignore_eos=True).text
    outcomes: list[tuple[str, object]] = []
    lock, streaming = threading.Lock(), threading.Semaphore(0)
    request = dict(model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0, extra_body={"ignore_eos": True})

    def ask(stream: bool) -> None:
        try:
            if stream:
                chunks = []
                for chunk in client.completions.create(**request, stream=True):
                    chunks.append(chunk)
                    if len(chunks) == 1:
                        streaming.release()
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                assert chunks[-1].choices[0].finish_reason == "length"
                outcome = ("ok", text)
            else:
                outcome = ("ok", client.completions.create(**request).choices[0].text)
        except openai.APIStatusError as err:
            outcome = ("error", (err.status_code, err.response.text[:300]))
        except openai.APIConnectionError as err:
            outcome = ("closed", type(err.__cause__).__name__)
        with lock:
            outcomes.append(outcome)

    before = {name: ray.get_actor(name, namespace="serve") for name in replicas()}
    threads = [threading.Thread(target=ask, args=(i % 3 == 0,)) for i in range(12)]
    for t in threads:
        t.start()
    for _ in range(4):  # until every stream has its first tokens
        assert streaming.acquire(timeout=60)
    running = {name: ray.get(actor.get_num_ongoing_requests.remote()) for name, actor in before.items()}
    killed = max(running, key=running.get)
    ray.kill(before[killed], no_restart=True)
    for t in threads:
        t.join()
    assert len(outcomes) == 12
    assert all(answer == want for kind, answer in outcomes if kind == "ok")
    failed = [(kind, answer) for kind, answer in outcomes if kind != "ok"]
    assert 1 <= len(failed) <= running[killed]
    assert set(failed) <= {("error", (500, "Internal Server Error")), ("closed", "RemoteProtocolError")}
    wait_for_replicas(REPLICAS)
    assert set(replicas()) != set(before)
    after = [client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0) for _ in range(4)]
    assert all(reply.choices[0].text == want[: len(reply.choices[0].text)] for reply in after)


def test_scaling_flags_become_the_deployments_options():
    config = ServerConfig(model_name=MODEL, max_pending=12, max_batch_rows=8)
    fixed = deployment_options(config, Scaling(replicas=3, cpus=4, gpus=1))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1}
    assert fixed["max_ongoing_requests"] == fixed["max_queued_requests"] == 12
    scaled = deployment_options(config, Scaling(autoscale=(1, 4)))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
