"""`central-sync audit`: verify the audit log's hash chain, list its entries, export them.

Reading needs the database, not an account: whoever can open it reads the log anyway. An
export is itself audited, by --by (the operating system's user unless given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.table import Table
from rich.text import Text

from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    add_by_option,
    add_command,
    add_group,
    load_config,
    make_console,
    open_database,
)
from central_sync.db.audit import AuditFilter, parse_anchor

LIST_MAX = 1000


def cmd_audit_verify(args: argparse.Namespace) -> int:
    try:
        anchor = parse_anchor(args.anchor) if args.anchor else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_database(load_config(args)) as db:
        report = db.verify_audit_chain(anchor)
    console = make_console()
    if report.intact:
        console.print(f"audit log intact: {report.entries} entries, 1 to {report.head_seq}",
                      highlight=False)
        if report.head_seq:
            console.print(f"head {report.head_seq}:{report.head_hash}  (keep it outside "
                          "central; `audit verify --anchor` with it later also shows entries "
                          "cut off the end)", highlight=False)
        return EXIT_OK
    for finding in report.findings:
        where = f"entry {finding.seq}" if finding.seq is not None else "log"
        console.print(Text(f"{where}: {finding.problem}: {finding.message}"))
    more = f" (and {report.more_findings} more)" if report.more_findings else ""
    console.print(f"audit log NOT intact: {len(report.findings)} findings{more}; entries 1 to "
                  f"{report.verified_up_to} verified, of {report.entries} chained",
                  highlight=False)
    return EXIT_FAILED


def cmd_audit_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= LIST_MAX:
        raise UsageError(f"--limit must be 1 to {LIST_MAX}")
    filters = _filters(args)
    with open_database(load_config(args)) as db:
        entries = db.list_audit(args.limit, filters, before_seq=args.before)
    console = make_console()
    if not entries:
        console.print("no audit entries match")
        return EXIT_OK
    table = Table(title="Audit log, newest first")
    for column in ("seq", "when", "who", "what", "subject", "detail"):
        table.add_column(column)
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        table.add_row(str(e["seq"]), when, *(Text(e[k]) for k in ("actor", "action", "subject",
                                                                 "detail")))
    console.print(table)
    if len(entries) == args.limit:
        console.print(f"older: --before {entries[-1]['seq']}", highlight=False)
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from central_sync.web.audit import csv_lines, json_chunks

    filters = _filters(args)
    with open_database(load_config(args)) as db:
        head = db.audit_head_seq()
        count = db.count_audit(filters, through_seq=head)
        entries = db.iter_audit(filters, through_seq=head)
        chunks = csv_lines(entries) if args.format == "csv" else json_chunks(entries, filters)
        with _output(args.out) as out:
            for chunk in chunks:
                out.write(chunk)
        db.audit(args.by, "audit.export", f"{count} entries", json.dumps(
            {"format": args.format, "out": str(args.out), **filters.as_dict()},
            sort_keys=True))
    print(f"exported {count} audit entries ({args.format}) to "
          f"{'stdout' if str(args.out) == '-' else args.out}", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _output(path: Path) -> Iterator[TextIO]:
    if str(path) == "-":
        yield sys.stdout
        return
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            yield out
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}; choose another --out") from None


def _filters(args: argparse.Namespace) -> AuditFilter:
    try:
        return AuditFilter.from_text(args.actor, args.action, args.since, args.until,
                                     args.subject)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="only entries by this user (exact name)")
    parser.add_argument("--action", help="only actions starting with this, e.g. model. or "
                                         "model.approve")
    parser.add_argument("--subject", help="only subjects starting with this, e.g. "
                                          "surface-defects@1.2.0 or gw-07/")
    parser.add_argument("--since", help="from this date or time, e.g. 2026-03-01 or "
                                        "2026-03-01T14:30 (central's local time)")
    parser.add_argument("--until", help="up to this time, or to the end of this date")


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "audit", help="verify, list or export the audit log",
        description="Every change central makes (publish, approve, deploy, rollout, label, "
                    "accounts, ...) is an entry in a hash-chained audit log: each entry holds "
                    "the hash of the one before, so an entry altered, deleted, inserted or "
                    "reordered afterwards shows when the chain is verified.",
        examples=["central-sync audit verify -c central-sync.yaml",
                  "central-sync audit list --action model. -c central-sync.yaml",
                  "central-sync audit export --format csv --out audit.csv -c central-sync.yaml"],
        dest="audit_command")
    verify = add_command(
        actions, "verify", help="check the hash chain; exit 1 on any finding",
        description="Walk the chain and name every entry altered (its hash does not match "
                    "its contents), deleted (a gap in seq), or inserted, replaced or reordered "
                    "(its prev_hash is not the previous entry's hash), and entries without a "
                    "seq. Exit status 0 when intact, 1 on any finding. Entries cut off the end "
                    "show only against a head recorded earlier (--anchor).",
        examples=["central-sync audit verify -c central-sync.yaml",
                  "central-sync audit verify --anchor 1234:9f86d081884c7d65... "
                  "-c central-sync.yaml"])
    verify.add_argument("--anchor", metavar="SEQ:HASH",
                        help="an entry's seq and hash printed by an earlier verify: it must "
                             "still be there, unchanged")
    verify.set_defaults(func=cmd_audit_verify)
    listing = add_command(
        actions, "list", help="show entries, newest first, filtered",
        description="Show audit entries newest first, filtered by who, what and when; page "
                    "back with --before.",
        examples=["central-sync audit list -c central-sync.yaml",
                  "central-sync audit list --actor anna --since 2026-03-01",
                  "central-sync audit list --action dataset. --limit 20 --before 1500",
                  "central-sync audit list --subject surface-defects@1.2.0   # its lineage"])
    _add_filter_options(listing)
    listing.add_argument("--limit", type=int, default=50, help=f"at most this many (1 to "
                                                                f"{LIST_MAX}; default 50)")
    listing.add_argument("--before", type=int, metavar="SEQ", help="only entries older than "
                                                                   "this seq (the next page)")
    listing.set_defaults(func=cmd_audit_list)
    export = add_command(
        actions, "export", help="write the filtered entries as CSV or JSON",
        description="Write the entries (oldest first, up to the newest when the export "
                    "starts) as CSV, for a spreadsheet (cells that start like a formula are "
                    "escaped with a leading '), or JSON, exact, so the chain can be verified "
                    "again from the file. The export is itself audited.",
        examples=["central-sync audit export --format csv --out audit.csv -c central-sync.yaml",
                  "central-sync audit export --format json --action model. --since 2026-01-01 "
                  "--out models-audit.json",
                  "central-sync audit export --format csv --actor anna --out -   # to stdout"])
    export.add_argument("--format", choices=["csv", "json"], required=True,
                        help="csv for a spreadsheet, json exact")
    export.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the file to write (replaced if it exists); - for stdout")
    _add_filter_options(export)
    add_by_option(export, "who exports")
    export.set_defaults(func=cmd_audit_export)
