"""`corral keys add|list`: API keys in the fleet file, stored as SHA-256 hashes only."""

from __future__ import annotations

import argparse
from typing import Any

from corral.commands._common import add_fleet_arg, domain_errors, load_fleet_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys (hashed in the fleet file) and per-key rate limits")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = ksub.add_parser("add", help="create a key, store its hash in FLEET, print the key once",
                          description="Create an API key, store its SHA-256 in FLEET's auth section and print the "
                                      "key once. FLEET is validated with the new key and replaced atomically; "
                                      "comments and formatting in it are not preserved.")
    add.add_argument("name", help="who the key is for")
    add_fleet_arg(add, required=True)
    add.add_argument("--admin", action="store_true", help="also grant the admin scope (/v1/corral/*)")
    add.add_argument("--rpm", type=int, default=None, help="requests per minute (default unlimited)")
    add.add_argument("--tpm", type=int, default=None, help="tokens per minute (default unlimited)")
    add.add_argument("--enable", action="store_true", help="also set auth.enabled: true (keys required)")
    add.set_defaults(func=cmd_add)
    ls = ksub.add_parser("list", help="key names, scopes and limits (never the keys)")
    add_fleet_arg(ls)
    ls.set_defaults(func=cmd_list)


def cmd_add(args: argparse.Namespace) -> int:
    from corral.cluster.spec.editor import edit_fleet_file
    from corral.serving.auth import hash_key, new_key

    key = new_key()
    record: dict[str, Any] = {"name": args.name, "sha256": hash_key(key),
                              "scopes": ["inference", "admin"] if args.admin else ["inference"]}
    if args.rpm is not None:
        record["requests_per_minute"] = args.rpm
    if args.tpm is not None:
        record["tokens_per_minute"] = args.tpm

    def add_key(doc: dict[str, Any]) -> None:
        auth = doc.setdefault("auth", {})
        auth.setdefault("keys", []).append(record)
        if args.enable:
            auth["enabled"] = True

    with domain_errors():  # nothing is written unless the result is a valid fleet
        edit_fleet_file(args.fleet, add_key)
    print(key)
    print(f"stored the hash of key {args.name!r} in {args.fleet}; apply with `corral up {args.fleet}` "
          "(in place, no restarts). The key is not shown again.", flush=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    fleet = load_fleet_or_exit(args.fleet, check_paths=False)
    print(f"auth {'enabled' if fleet.auth.enabled else 'disabled'}; {len(fleet.auth.keys)} key(s)")
    for k in fleet.auth.keys:
        print(f"  {k.name:<20} scopes={','.join(k.scopes)} rpm={k.requests_per_minute or '-'} tpm={k.tokens_per_minute or '-'}")
    return 0
