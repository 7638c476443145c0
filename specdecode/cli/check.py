"""`specdecode check`: compatibility, costs on this machine, acceptance, the K to use."""

from __future__ import annotations

import argparse
import json

from specdecode.cli.common import load_decoder, subcommand


def add_parser(sub) -> None:
    chk = subcommand(sub, "check", "are target and draft compatible, what do they cost here, which K to use")
    chk.add_argument("--max-k", type=int, default=8, help="largest K to consider")


def run(args: argparse.Namespace) -> int:
    from specdecode.check import run_check

    dec = load_decoder(args)
    report = run_check(dec, args.proposer, k_max=args.max_k)
    if args.json:
        print(json.dumps({"compatible": True, **report.to_dict()}))
    else:
        print("compatible: same tokenizer and special tokens")
        print(report.render())
    return 0
