"""The OpenAI request bodies the server accepts and the response objects it returns."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specdecode.grammar import GrammarSpec
from specdecode.logprobs import TokenLogprob
from specdecode.sampling import MAX_LOGPROBS, SEED_RANGE
from specdecode.stats import DecodeStats


class APIError(Exception):
    """An error for the client: HTTP status and an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


NonEmpty = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchema(BaseModel):
    name: str = "output"
    schema_: dict = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`, and two extensions: {"type": "regex", "regex": ...} and
    {"type": "grammar", "grammar": <a Lark grammar>}."""

    type: Literal["text", "json_object", "json_schema", "regex", "grammar"]
    json_schema: JsonSchema | None = None
    regex: str | None = None
    grammar: str | None = None

    def spec(self) -> GrammarSpec | None:
        """The grammar this format asks for (None for text); ValueError where its field is missing."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GrammarSpec("json_object")
        field = {"json_schema": self.json_schema, "regex": self.regex, "grammar": self.grammar}[self.type]
        if field is None:
            raise ValueError(f"response_format of type {self.type!r} needs a {self.type!r} field")
        if self.type == "json_schema":
            return GrammarSpec.json_schema(field.schema_)
        return GrammarSpec("regex" if self.type == "regex" else "lark", field)


class Sampling(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int = Field(0, ge=0)  # extensions
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    num_speculative_tokens: Annotated[int, Field(ge=0)] | Literal["auto", "heuristic"] | None = None
    ignore_eos: bool = False  # as vLLM: decode max_tokens whatever the model ends with (load tests)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)  # extension, as vLLM
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdecimal():
                raise ValueError(f"logit_bias keys must be token ids (strings of digits), got {key!r}")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])


class CompletionRequest(Sampling):
    prompt: (
        NonEmpty
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        """Clear messages for the shapes the union below would report branch by branch."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]  # one prompt of token ids in a batch of one, as evaluation harnesses send it
        strings = isinstance(value, list) and all(isinstance(p, str) for p in value)
        ids = isinstance(value, list) and all(type(t) is int for t in value)
        if not (isinstance(value, str) or strings or ids):
            raise ValueError("must be a string, a list with one string, or a list of token ids (integers)")
        if not value or strings and not value[0]:
            raise ValueError("the prompt is empty")
        if strings and len(value) > 1:
            raise ValueError("send one prompt per request (a list of several prompts is not supported)")
        if ids and min(value) < 0:
            raise ValueError("token ids must be >= 0")
        return value


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


LOGPROB_FLOOR = -9999.0  # as vLLM: a token the request's rules rule out (-inf) reported as this, JSON having no -inf


def finite(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def token_text(tokenizer, token: int) -> str:
    """A token as text (a piece of a multi-byte character decodes to U+FFFD)."""
    return tokenizer.decode([token])


def completion_logprobs(tokenizer, tokens: list[int], entries: list[TokenLogprob | None], offset: int = 0) -> dict:
    """The completions API's logprobs object for `tokens` (an entry of None: the prompt's first token, which
    has no log-probability); text offsets count characters from `offset`."""
    texts = [token_text(tokenizer, t) for t in tokens]
    offsets = [offset + sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    return {
        "tokens": texts,
        "token_logprobs": [None if e is None else finite(e.logprob) for e in entries],
        "top_logprobs": [  # as vLLM: the chosen token and the top alternatives
            None if e is None else {token_text(tokenizer, t): finite(v) for t, v in [(e.token, e.logprob), *e.top]}
            for e in entries
        ],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer, entries: list[TokenLogprob]) -> dict:
    """The chat API's logprobs object: per token its text, bytes, log-probability and top alternatives."""

    def item(token: int, logprob: float) -> dict:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode())}

    content = [{**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def envelope(kind: str, request_id: str, model: str, created: int | None = None) -> dict:
    return {"id": request_id, "object": kind, "created": created or int(time.time()), "model": model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def speculative(stats: list[DecodeStats]) -> dict:
    """The speculative statistics of a request's choices together (vLLM's metric names)."""
    total = DecodeStats()
    for s in stats:
        total.add(s)
    return {
        "num_drafts": total.drafted_at[0] if total.drafted_at else 0,
        "draft_tokens": total.drafted,
        "accepted_tokens": total.accepted,
        "acceptance_rate": total.acceptance_rate,
        "mean_acceptance_length": total.mean_acceptance_length,
        "per_position_acceptance_rate": total.per_position_acceptance,
        "target_passes": total.target_passes,
        "draft_passes": total.draft_passes,
    }


def openapi_schema(routes, model_name: str, max_tokens: int, max_n: int) -> dict:
    """The OpenAPI document of the app's `routes`, with the request bodies the completion routes read
    themselves (they parse JSON under the server's limits, so FastAPI does not see their models) and
    this server's model name and limits."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title="specdecode", version="1", routes=routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model in (("/v1/completions", CompletionRequest), ("/v1/chat/completions", ChatRequest)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        fields = body["properties"]
        fields["model"] |= {"enum": [model_name]}
        fields["max_tokens"]["anyOf"][0]["maximum"] = max_tokens
        fields["n"]["maximum"] = max_n
        components[model.__name__] = body
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": content}
    schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    return schema
