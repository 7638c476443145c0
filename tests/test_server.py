"""The real server (`specdecode serve` in a subprocess, tiny models saved to folders, a free
loopback port), spoken to with the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import openai
import pytest
from serving import KEY, MODEL, metrics, raw, running_server, send_raw_request

from specdecode import SamplingParams
from specdecode.grammar import GrammarSpec

K = 3
LIMITS = {
    "--max-body-bytes": "20000",
    "--max-pending": "4",
    "--max-tokens-limit": "240",
    "--max-n": "4",
    "--max-prompt-tokens": "120",
}
PROMPT = "def add(a, b):"
CHAT = [{"role": "user", "content": "write a loop"}]


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    options = ["-k", str(K), *[x for kv in LIMITS.items() for x in kv]]
    with running_server(model_dirs, tmp_path_factory.mktemp("server") / "server.log", *options) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def expected(reference, prompt, max_tokens, **sampling):
    reference.reset()
    return reference.generate(prompt, max_tokens, num_speculative_tokens=K, sampling=SamplingParams(**sampling))


def test_completion_is_the_decoders_greedy_output(client, reference):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0)
    want = expected(reference, PROMPT, 30)
    assert out.choices[0].text == want.text and out.choices[0].finish_reason == want.finish_reason
    assert out.usage.completion_tokens == len(want.token_ids)
    assert out.usage.prompt_tokens == len(reference.encode(PROMPT))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")
    spec = out.model_extra["speculative"]
    assert spec["draft_tokens"] >= spec["accepted_tokens"] > 0 and spec["mean_acceptance_length"] > 1


def test_streamed_completion_with_usage(client, reference):
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    want = expected(reference, PROMPT, 30)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert chunks[-1].model_extra["speculative"]["accepted_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_chat_is_the_decoders_greedy_output(client, reference, stream):
    want = expected(reference, CHAT, 25)
    if stream:
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=25, temperature=0, stream=True)
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
        assert all(c.object == "chat.completion.chunk" for c in chunks)
    else:
        out = client.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=25, temperature=0)
        text, finish = out.choices[0].message.content, out.choices[0].finish_reason
        assert out.usage.completion_tokens == len(want.token_ids) and out.choices[0].message.role == "assistant"
    assert text == want.text and finish == want.finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_n_samples_use_seeds_from_seed(client, reference, stream):
    """Choice i is sampled with seed + i: each equals the decoder's own sample with that seed."""
    request = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=5, n=3, extra_body={"top_k": 10})
    wants = [expected(reference, PROMPT, 12, temperature=1.0, top_k=10, seed=5 + i).text for i in range(3)]
    if stream:
        texts = [""] * 3
        for chunk in client.completions.create(**request, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.text
    else:
        out = client.completions.create(**request)
        texts = [c.text for c in sorted(out.choices, key=lambda c: c.index)]
    assert texts == wants
    assert len(set(wants)) > 1  # the seeds differ, and so do the samples


def test_concurrent_requests_are_decoded_together_and_each_is_its_own_output(client, server, reference):
    """Four requests at once (--max-pending), greedy and seeded samples with n = 2: the server runs them
    in shared steps (batches of several rows) and each answer equals the decoder's own for that request alone."""
    prompts = ["def add(a, b):", "a", "print(1, 2) = 3", "the quick brown fox"]
    start = metrics(server)
    before = start.get("specdecode_batch_rows_sum", 0.0), start.get("specdecode_batch_rows_count", 0)
    answers = {}

    def ask(i: int) -> None:
        if i % 2:
            sampled = dict(temperature=1.0, seed=7 * i, n=2, extra_body={"top_k": 10})
            out = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=20, **sampled)
        else:
            out = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=20, temperature=0)
        answers[i] = [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, prompt in enumerate(prompts):
        if i % 2:
            want = [expected(reference, prompt, 20, temperature=1.0, top_k=10, seed=7 * i + c).text for c in range(2)]
        else:
            want = [expected(reference, prompt, 20).text]
        assert answers[i] == want, f"request {i}"
    after = metrics(server)
    rows = after["specdecode_batch_rows_sum"] - before[0]
    steps = after["specdecode_batch_rows_count"] - before[1]
    assert rows / steps > 1.5  # most steps decoded several requests' rows together


def test_stop_strings(client, reference):
    full = expected(reference, PROMPT, 30).text
    stop = full[5:7]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert out.choices[0].text == expected(reference, PROMPT, 30, stop=(stop,)).text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_ignore_eos_decodes_max_tokens(client, reference):
    """vLLM's `ignore_eos`: the EOS token is kept as text and decoding goes on to max_tokens."""
    reference.reset()
    want = reference.generate(PROMPT, 200, num_speculative_tokens=K, ignore_eos=True)
    assert reference.eos_ids & set(want.token_ids)  # these tiny models do emit EOS within 200 tokens
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.choices[0].text == want.text and out.usage.completion_tokens == 200


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert raw(server, "/health", key=None, method="GET") == (200, {"status": "ok"})
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    request = urllib.request.Request(server["base"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["specdecode_spec_decode_num_draft_tokens_total"] > 0
    assert values["specdecode_spec_decode_num_accepted_tokens_total"] > 0
    assert 0 < values["specdecode_spec_decode_acceptance_rate"] <= 1
    assert values['specdecode_spec_decode_num_accepted_tokens_per_pos_total{position="0"}'] > 0
    assert values["specdecode_generation_tokens_total"] >= 8
    assert "/v1/completions prompt=" in server["log"].read_text()  # one log line per request


BAD = {  # name -> (path, body, key, expected status)
    "malformed JSON": ("/v1/completions", b'{"model": "tiny", "prompt": ', KEY, 400),
    "body not an object": ("/v1/completions", b"[1, 2]", KEY, 400),
    "unknown model": ("/v1/completions", {"model": "gpt-9", "prompt": "a"}, KEY, 404),
    "negative max_tokens": ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": -1}, KEY, 400),
    "max_tokens over the limit": ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 241}, KEY, 400),
    "temperature out of range": ("/v1/completions", {"model": MODEL, "prompt": "a", "temperature": 3}, KEY, 400),
    "top_p out of range": ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "top_p": 0}, KEY, 400),
    "n too large": ("/v1/completions", {"model": MODEL, "prompt": "a", "n": 5}, KEY, 400),
    "empty prompt": ("/v1/completions", {"model": MODEL, "prompt": ""}, KEY, 400),
    "no messages": ("/v1/chat/completions", {"model": MODEL, "messages": []}, KEY, 400),
    "missing prompt": ("/v1/completions", {"model": MODEL}, KEY, 400),
    "context overflow": ("/v1/completions", {"model": MODEL, "prompt": "ab" * 50, "max_tokens": 200}, KEY, 400),
    "prompt over the limit": ("/v1/completions", {"model": MODEL, "prompt": "a" * 130, "max_tokens": 1}, KEY, 400),
    "logprobs out of range": ("/v1/completions", {"model": MODEL, "prompt": "a", "logprobs": 21}, KEY, 400),
    "top_logprobs without logprobs": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "top_logprobs": 2},
        KEY,
        400,
    ),
    "top_logprobs out of range": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "logprobs": True, "top_logprobs": 30},
        KEY,
        400,
    ),
    "logit_bias id outside the vocabulary": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "logit_bias": {"100000": 1}},
        KEY,
        400,
    ),
    "logit_bias value out of range": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "logit_bias": {"5": 101}},
        KEY,
        400,
    ),
    "logit_bias key not an id": ("/v1/completions", {"model": MODEL, "prompt": "a", "logit_bias": {"x": 1}}, KEY, 400),
    "presence_penalty out of range": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "presence_penalty": 3},
        KEY,
        400,
    ),
    "invalid regex": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "response_format": {"type": "regex", "regex": "(a"}},
        KEY,
        400,
    ),
    "invalid JSON schema": (
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": "a",
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 1}}},
        },
        KEY,
        400,
    ),
    "json_schema without its schema": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "response_format": {"type": "json_schema"}},
        KEY,
        400,
    ),
    "unknown response_format": (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "response_format": {"type": "yaml"}},
        KEY,
        400,
    ),
    "max_tokens 0 without echo": ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 0}, KEY, 400),
    "oversize body": ("/v1/completions", {"model": MODEL, "prompt": "a" * 30000}, KEY, 413),
    "wrong API key": ("/v1/completions", {"model": MODEL, "prompt": "a"}, "wrong", 401),
    "no API key": ("/v1/models", None, None, 401),
    "unknown route": ("/v1/engines", {}, KEY, 404),
}


def assert_clear_error(server, case: str) -> None:
    """BAD[case] sent to `server` gets its status and an OpenAI error object without a traceback."""
    path, body, key, status = BAD[case]
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    got, reply = raw(server, path, data, key=key, method="GET" if body is None else "POST")
    assert got == status, reply
    assert set(reply) == {"error"} and reply["error"]["message"] and "Traceback" not in reply["error"]["message"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_clear_error(server, case):
    assert_clear_error(server, case)


def test_logprobs_are_the_decoders(client, reference):
    """Completions (non-streaming and streaming) and chat (n = 2, sampled, seeded): every token's logprob and
    alternatives equal the decoder's own, which equal target-only decoding's (test_rules.py)."""
    want = expected(reference, PROMPT, 20, logprobs=3)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([e.logprob for e in want.logprobs], abs=1e-6)
    assert lp.tokens == [reference.tokenizer.decode([e.token]) for e in want.logprobs]
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    assert "".join(lp.tokens) == out.choices[0].text and lp.text_offset[0] == 0
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=3, stream=True
    )
    values = [v for chunk in streamed for choice in chunk.choices for v in choice.logprobs.token_logprobs]
    assert values == lp.token_logprobs
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, temperature=1.0, seed=9, n=2, logprobs=True, top_logprobs=2
    )
    for choice in chat.choices:
        want = expected(reference, CHAT, 12, temperature=1.0, seed=9 + choice.index, logprobs=2)
        content = choice.logprobs.content
        assert [c.logprob for c in content] == pytest.approx([e.logprob for e in want.logprobs], abs=1e-6)
        assert [[t.token for t in c.top_logprobs] for c in content] == [
            [reference.tokenizer.decode([t]) for t, _ in e.top] for e in want.logprobs
        ]


def test_echo_scores_the_prompt_as_evaluation_harnesses_ask(client, reference):
    """lm-evaluation-harness's request: the prompt as token ids, echo, logprobs 1, max_tokens 1 (and 0)."""
    ids = reference.encode(PROMPT)
    scores = reference.score(ids, 1)
    for max_tokens in (0, 1):
        out = client.completions.create(
            model=MODEL, prompt=[ids], max_tokens=max_tokens, echo=True, logprobs=1, temperature=0
        )
        lp = out.choices[0].logprobs
        assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + max_tokens
        assert lp.token_logprobs[1 : len(ids)] == pytest.approx([e.logprob for e in scores], abs=1e-6)
        assert out.choices[0].text.startswith(PROMPT)


def test_penalties_logit_bias_and_a_grammar_give_the_decoders_output(client, reference):
    rules = dict(presence_penalty=0.5, frequency_penalty=0.8, logit_bias={5: 3.0, 7: -50.0})
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
        presence_penalty=0.5, frequency_penalty=0.8, logit_bias={"5": 3.0, "7": -50.0},
    )  # fmt: skip
    assert out.choices[0].text == expected(reference, PROMPT, 30, **rules).text
    assert out.choices[0].text != expected(reference, PROMPT, 30).text  # the rules changed it
    regex = "(ab|c)+ [0-9]{2,4}"
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
        extra_body={"response_format": {"type": "regex", "regex": regex}},
    )  # fmt: skip
    assert re.fullmatch(regex, out.choices[0].text) and out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == expected(reference, PROMPT, 30, grammar=GrammarSpec("regex", regex)).text
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=30, temperature=0, logprobs=True, top_logprobs=5,
        extra_body={"response_format": {"type": "regex", "regex": "(ab|c)+"}},
    )  # fmt: skip
    tops = [t.logprob for c in chat.choices[0].logprobs.content for t in c.top_logprobs]
    assert min(tops) == -9999.0  # alternatives the grammar rules out (-inf): vLLM's floor, JSON has no -inf


def test_openai_client_sees_the_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt="a", temperature=-1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()


def test_a_full_queue_answers_429_and_loses_nothing(server, client):
    """Twelve requests at once against room for four: the rest get 429, the accepted ones finish whole."""
    results = []

    def one():
        try:
            out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0)
            results.append((200, out.choices[0].finish_reason, out.usage.completion_tokens))
        except openai.RateLimitError as err:
            results.append((429, err.body["message"], None))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r[0] for r in results]
    assert 429 in statuses and statuses.count(200) >= 4
    full = [r for r in results if r[0] == 200]
    assert all(tokens == full[0][2] for _, _, tokens in full)  # same greedy request, same complete answer


def metric(server, name: str) -> float:
    return metrics(server)[name]


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(server, client, reference, stream):
    prompt = "hello world"
    full = expected(reference, prompt, 220)
    assert len(full.token_ids) == 220  # uncut, this request would generate 220 tokens (about 1 s)
    before = metric(server, "specdecode_generation_tokens_total")
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 220, "temperature": 0, "stream": stream}
    with send_raw_request(server, body) as sock:
        if stream:  # headers first, then the first chunk; then hang up
            received = b""
            while b"data: " not in received:
                part = sock.recv(4096)
                assert part, "the server closed the stream"
                received += part
        else:  # hang up once the generation has started
            while not metric(server, "specdecode_num_requests_running"):
                time.sleep(0.01)
    deadline = time.time() + 10
    while metric(server, "specdecode_num_requests_running") and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "specdecode_num_requests_running") == 0
    generated = metric(server, "specdecode_generation_tokens_total") - before
    assert generated < 150, f"{generated} tokens generated after the client left"
    assert metrics(server)['specdecode_requests_total{endpoint="/v1/completions",status="499"}'] >= 1
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)  # the slot is free
    assert out.choices[0].finish_reason in ("length", "stop")


def test_a_max_n_larger_than_a_batch_is_refused_at_startup():
    from specdecode.server.config import ServerConfig

    with pytest.raises(ValueError, match="--max-n .* at most --max-batch-rows"):
        ServerConfig(model_name="m", max_n=32, max_batch_rows=16)
