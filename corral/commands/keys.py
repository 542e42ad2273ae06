"""`corral keys add|list`: API keys in the fleet file, stored as SHA-256 hashes only."""

from __future__ import annotations

import argparse
from pathlib import Path

from corral.commands._common import EXIT_BAD_INPUT, CliError, load_fleet_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys (hashed in the fleet file) and per-key rate limits")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = ksub.add_parser("add", help="create a key, store its hash in FLEET, print the key once")
    add.add_argument("name", help="who the key is for")
    add.add_argument("fleet", help="fleet spec YAML to update")
    add.add_argument("--admin", action="store_true", help="also grant the admin scope (/v1/corral/*)")
    add.add_argument("--rpm", type=int, default=None, help="requests per minute (default unlimited)")
    add.add_argument("--tpm", type=int, default=None, help="tokens per minute (default unlimited)")
    add.add_argument("--enable", action="store_true", help="also set auth.enabled: true (keys required)")
    add.set_defaults(func=run_add)
    ls = ksub.add_parser("list", help="key names, scopes and limits (never the keys)")
    ls.add_argument("fleet", help="fleet spec YAML")
    ls.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    import yaml

    from corral.cluster.spec import SpecError, parse_fleet
    from corral.serving.auth import hash_key, new_key

    path = Path(args.fleet)
    load_fleet_or_exit(str(path), check_paths=False)  # the file is valid before we touch it
    data = yaml.safe_load(path.read_text())
    key = new_key()
    record = {"name": args.name, "sha256": hash_key(key),
              "scopes": ["inference", "admin"] if args.admin else ["inference"]}
    if args.rpm is not None:
        record["requests_per_minute"] = args.rpm
    if args.tpm is not None:
        record["tokens_per_minute"] = args.tpm
    auth = data.setdefault("auth", {})
    auth.setdefault("keys", []).append(record)
    if args.enable:
        auth["enabled"] = True
    try:
        parse_fleet(data, source=str(path))  # nothing is written unless the result is valid
    except SpecError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    print(key)
    print(f"stored the hash of key {args.name!r} in {path}; apply with `corral up {path}` "
          "(in place, no restarts). The key is not shown again.", flush=True)
    return 0


def run_list(args: argparse.Namespace) -> int:
    fleet = load_fleet_or_exit(args.fleet, check_paths=False)
    print(f"auth {'enabled' if fleet.auth.enabled else 'disabled'}; {len(fleet.auth.keys)} key(s)")
    for k in fleet.auth.keys:
        print(f"  {k.name:<20} scopes={','.join(k.scopes)} rpm={k.requests_per_minute or '-'} tpm={k.tokens_per_minute or '-'}")
    return 0
