"""`specdecode serve`: the OpenAI-compatible server, its flags generated from `ServerConfig`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from specdecode.cli.common import load_decoder, num_speculative_tokens, subcommand
from specdecode.server.config import LIMITS


def add_parser(sub) -> None:
    srv = subcommand(sub, "serve", "an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--api-key",
        default=os.environ.get("SPECDECODE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $SPECDECODE_API_KEY)",
    )
    srv.add_argument(
        "--served-model-name", help="the model name clients send (default: the target's folder name or id)"
    )
    srv.add_argument(
        "-k",
        "--num-speculative-tokens",
        type=num_speculative_tokens,
        default="auto",
        help="K when a request does not say (it may send num_speculative_tokens); default auto",
    )
    srv.add_argument(
        "--allow-no-api-key",
        action="store_true",
        help="listen beyond this machine (--host) without --api-key; refused without this flag",
    )
    limits = srv.add_argument_group("limits (every request and connection is bounded; defaults in brackets)")
    for limit in LIMITS:
        flag, help = "--" + limit.name.replace("_", "-"), limit.metadata["help"]
        limits.add_argument(flag, type=limit.metadata["type"], default=limit.default, help=f"{help} [{limit.default}]")


def run(args: argparse.Namespace) -> int:
    import logging

    from specdecode.server import ServerConfig, create_app
    from specdecode.server.http import is_loopback, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.api_key and not is_loopback(args.host) and not args.allow_no_api_key:
        print(
            f"error: --host {args.host} listens beyond this machine and there is no --api-key: anyone who can "
            "reach it could use the model. Set --api-key (or $SPECDECODE_API_KEY), or pass --allow-no-api-key.",
            file=sys.stderr,
        )
        return 2
    dec = load_decoder(args)
    limits = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name != "model_name"}
    config = ServerConfig(model_name=args.served_model_name or Path(args.target.rstrip("/")).name, **limits)
    print("warming up (kernels, and the auto policy's cost calibration) ...", file=sys.stderr, flush=True)
    dec.generate("Hello", max_new_tokens=4, num_speculative_tokens=config.num_speculative_tokens)
    dec.reset()
    print(f"serving {config.model_name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(create_app(dec, config), args.host, args.port, config.max_connections, config.header_timeout)
    return 0
