"""The user archive's writes on their own: CPU per row that `write_rows` costs in SQLite.

``python -m benchmarks.archive_writes`` makes a fresh SQLite store (the schema as shipped),
``--accounts`` accounts, and writes batches of ``--batch`` rows as the archive's writer hands
them over: seq increasing, the accounts taking turns (a busy server's batch holds many
accounts' messages interleaved), each row a ~350-byte stored message. It prints the CPU time
(user and system: most of the latter is the WAL's page writes) per row, over ``--rows`` rows
after a warm-up of a fifth as many, in one process: no reactor, no thread.

    python -m benchmarks.archive_writes --accounts 100
    python -m benchmarks.archive_writes --accounts 1000 --batch 5000

scripts/bench's msgs phase has 100 accounts chatting (``--pairs 50``); 1,000 is a busier
server's batch. See docs/performance.md (issue 16, "Fifth round").
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

STANZA = ("<message xmlns='jabber:client' to='{to}' type='chat' id='m12345' from='{owner}/bench'>"
          "<body>1765123456789012345</body><stanza-id xmlns='urn:xmpp:sid:0' by='{to}' "
          "id='18a2b3c4d5e6f7-abcdef12'/></message>")


def run(accounts: int, batch: int, rows: int) -> tuple[float, float]:
    """(user, system) CPU seconds per row written."""
    from sns_xmpp import startup
    startup.install()
    from sns_xmpp.store import mam as archive_sql
    from sns_xmpp.store.sqlite import SQLiteDatabase

    with tempfile.TemporaryDirectory(prefix="sns-xmpp-archive-writes-") as path:
        db = SQLiteDatabase(Path(path) / "store.sqlite")
        owners = [f"user{n:05d}@bench.example" for n in range(accounts)]
        for owner in owners:
            db.create_account(owner, [], 1.0, social=True)
        stanzas = [STANZA.format(owner=owner, to=owners[(n + 1) % accounts]) for n, owner in enumerate(owners)]
        seq = archive_sql.seq_at(1_700_000_000)

        def batches(count: int) -> list[list[archive_sql.Row]]:
            nonlocal seq
            made = []
            for _ in range(count):
                rows_made: list[archive_sql.Row] = []
                for n in range(batch):
                    seq += 1024
                    at = n % accounts
                    rows_made.append((seq, owners[at], f"{seq:x}-bench", owners[(at + 1) % accounts], "bench",
                                      stanzas[at]))
                made.append(rows_made)
            return made

        for rows_given in batches(max(1, rows // batch // 5)):
            archive_sql.write_rows(db, rows_given)
        timed = batches(max(1, rows // batch))
        before = os.times()
        for rows_given in timed:
            archive_sql.write_rows(db, rows_given)
        after = os.times()
        db.close()
    written = len(timed) * batch
    return (after.user - before.user) / written, (after.system - before.system) / written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100, help="accounts taking turns in each batch (100)")
    parser.add_argument("--batch", type=int, default=5000, help="rows per batch, one transaction each (5000)")
    parser.add_argument("--rows", type=int, default=300_000, help="rows timed (300000)")
    args = parser.parse_args()
    user, system = run(args.accounts, args.batch, args.rows)
    print(f"{1e6 * (user + system):.2f} us CPU per row (user {1e6 * user:.2f}, system {1e6 * system:.2f});"
          f" {args.accounts} accounts, {args.batch}-row batches, SQLite")


if __name__ == "__main__":
    main()
