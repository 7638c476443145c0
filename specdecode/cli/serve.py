"""`specdecode serve`: the OpenAI-compatible server, its flags generated from `ServerConfig`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from specdecode.cli.common import decoder_options, load_decoder, num_speculative_tokens, subcommand
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
    ray = srv.add_argument_group("Ray Serve (pip install 'specdecode[ray]'): replicas on one machine or a cluster")
    ray.add_argument("--ray", action="store_true", help="serve replicas of the model on Ray Serve")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=at_least_one, default=1, help="replicas, each with its own model [1]")
    scale.add_argument(
        "--autoscale", type=replica_range, metavar="MIN..MAX", help="between MIN and MAX replicas, following load"
    )
    ray.add_argument(
        "--address", help="join this Ray cluster ('auto': the one started on this node); default: start one here"
    )
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica, = its threads [1]")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (use with --device cuda) [0]")
    limits = srv.add_argument_group("limits (every request and connection is bounded; defaults in brackets)")
    for limit in LIMITS:
        flag, help = "--" + limit.name.replace("_", "-"), limit.metadata["help"]
        limits.add_argument(flag, type=limit.metadata["type"], default=limit.default, help=f"{help} [{limit.default}]")


def at_least_one(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value!r}")
    return int(value)


def replica_range(value: str) -> tuple[int, int]:
    low, sep, high = value.partition("..")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected MIN..MAX with 1 <= MIN <= MAX, got {value!r}")
    return bounds


def run(args: argparse.Namespace) -> int:
    import logging

    from specdecode.server import ServerConfig, create_app
    from specdecode.server.app import warm_up
    from specdecode.server.http import is_loopback, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.api_key and not is_loopback(args.host) and not args.allow_no_api_key:
        print(
            f"error: --host {args.host} listens beyond this machine and there is no --api-key: anyone who can "
            "reach it could use the model. Set --api-key (or $SPECDECODE_API_KEY), or pass --allow-no-api-key.",
            file=sys.stderr,
        )
        return 2
    limits = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name != "model_name"}
    config = ServerConfig(model_name=args.served_model_name or Path(args.target.rstrip("/")).name, **limits)
    if args.ray:
        return run_on_ray(args, config)
    dec = load_decoder(args)
    warm_up(dec, config.num_speculative_tokens)
    print(f"serving {config.model_name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(create_app(dec, config), args.host, args.port, config.max_connections, config.header_timeout)
    return 0


def run_on_ray(args: argparse.Namespace, config) -> int:
    from specdecode.server.ray_serve import Scaling, application, run  # an ImportError names specdecode[ray]

    load = decoder_options(args)
    for name in ("target", "draft"):  # replicas start in another working directory
        if load[name] and Path(load[name]).exists():
            load[name] = str(Path(load[name]).resolve())
    scaling = Scaling(args.replicas, args.autoscale, args.replica_cpus, args.replica_gpus)
    where = f"{scaling.autoscale[0]}..{scaling.autoscale[1]}" if scaling.autoscale else str(scaling.replicas)
    print(
        f"serving {config.model_name!r} on Ray Serve, {where} replicas, http://{args.host}:{args.port}/v1",
        file=sys.stderr,
        flush=True,
    )
    run(application(load, config, scaling), args.host, args.port, args.address)
    return 0
