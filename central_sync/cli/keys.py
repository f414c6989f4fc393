"""`central-sync keys`: create and show central's signing key, and change it in two steps
(next, then promote) so that no agent refuses a manifest on the way."""

from __future__ import annotations

import argparse
import sys

from central_sync.cli.common import (
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    add_group,
    load_config,
    make_console,
    open_database,
)
from edge_agent.kernel.signing import (
    NextKeyExists,
    promote_next_key,
    retired_keys_dir,
    start_key_change,
    write_key_pair,
)


def cmd_keys_init(args: argparse.Namespace) -> int:
    config = load_config(args)
    private, public, signer = write_key_pair(config.signing_key_path, force=args.force)
    console = make_console()
    console.print(f"signing key [bold]{signer.key_id}[/] written:", highlight=False)
    console.print(f"  private: {private}  (mode 600; keep it on central only)", highlight=False)
    console.print(f"  public:  {public}  (copy to every agent; name it in "
                  "security.central_public_key)", highlight=False)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    config = load_config(args)
    signer, upcoming = config.signer(), config.next_signer()
    also = f", and the next key {upcoming.key_id}" if upcoming else ""
    print(f"central signing key {signer.key_id}{also} ({args.config}):", file=sys.stderr)
    print(config.trusted_public_pem(), end="")
    return EXIT_OK


def cmd_keys_next(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        change = start_key_change(config.signing_key_path, config.next_signing_key_path,
                                  force=args.force)
    except NextKeyExists as exc:
        raise UsageError(f"{exc.path} exists already (key {exc.key_id}); give agents "
                         "signing.pub, then `central-sync keys promote`") from None
    console = make_console()
    console.print(f"next signing key [bold]{change.new.key_id}[/] written to "
                  f"{config.next_signing_key_path}; {change.old.key_id} still signs.",
                  highlight=False)
    console.print(f"  {change.public_path} now holds both keys: give it to every agent (as "
                  "its security.central_public_key), then run `central-sync keys promote`.",
                  highlight=False)
    return EXIT_OK


def cmd_keys_promote(args: argparse.Namespace) -> int:
    config = load_config(args)
    if config.next_signer() is None:  # said before a password is asked for
        raise UsageError("there is no next key: `central-sync keys next` makes one")
    with open_database(config) as db:
        by = acting_user(db, args, "admin")  # before anything changes on disk
        change = promote_next_key(config.signing_key_path, config.next_signing_key_path)
        db.audit(by, "keys.promote", change.new.key_id, f"replaces {change.old.key_id}")
    make_console().print(
        f"key {change.new.key_id} signs from now on (restart central-sync); "
        f"{change.old.key_id} no longer signs: its public key is kept in "
        f"{retired_keys_dir(config.signing_key_path)} so that versions it signed are checked "
        "before they are re-signed. Agents that trust only the old key refuse new manifests "
        "until they get signing.pub.", highlight=False)
    return EXIT_OK


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "keys", help="create or show central's signing key",
        description="The Ed25519 key pair that signs every manifest and command. Agents hold "
                    "its public half and refuse anything it did not sign.",
        examples=["central-sync keys init -c central-sync.yaml",
                  "central-sync keys show -c central-sync.yaml > central-signing.pub"],
        dest="keys_command")
    init = add_command(
        actions, "init", help="create the key pair at signing_key_path (and its .pub beside it)",
        description="Create the private key (mode 600) at the configured signing_key_path "
                    "and the public key (.pub) beside it. Refuses to replace an existing key "
                    "unless --force: agents trust the old one until they get the new .pub. "
                    "A replaced key's public key is kept in the `retired` folder.",
        examples=["central-sync keys init -c central-sync.yaml",
                  "central-sync keys init -c central-sync.yaml --force   # rotate"])
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_keys_init)
    show = add_command(
        actions, "show", help="print the public key (PEM) agents must trust",
        description="Print the public key and its id, to copy into agents' configuration.",
        examples=["central-sync keys show -c central-sync.yaml > central-signing.pub"])
    show.set_defaults(func=cmd_keys_show)
    upcoming = add_command(
        actions, "next",
        help="start a key change: a next key, trusted by agents before it signs",
        description="Create the next signing key beside the current one (which still signs) "
                    "and put both public keys in signing.pub. Give agents that signing.pub, "
                    "then `keys promote`: no agent refuses a manifest on the way.",
        examples=["central-sync keys next -c central-sync.yaml",
                  "central-sync keys show -c central-sync.yaml > central-signing.pub"])
    upcoming.add_argument("--force", action="store_true", help="replace a next key")
    upcoming.set_defaults(func=cmd_keys_next)
    promote = add_command(
        actions, "promote",
        help="finish a key change: the next key signs, the old one is retired",
        description="Make the next key (from `keys next`) the signing key. The old private "
                    "key is deleted; its public key is kept in the `retired` folder beside "
                    "the signing key, and a manifest it signed is checked against it and "
                    "re-signed when it is deployed. A stored manifest that is unsigned, or "
                    "signed by a key in neither place, is refused.",
        examples=["central-sync keys promote -c central-sync.yaml"])
    add_by_option(promote)
    promote.set_defaults(func=cmd_keys_promote)
