"""RocksDB's memory for a worker's tables: Faust's defaults, sizes per database, and one shared budget.

Opens the databases a worker holds (3 tables x --partitions, as Faust's store opens them, through
``faust.stores.rocksdb.RocksDBOptions`` with Herald's adapter installed), writes --values states of
--value-bytes over the states table's partitions, then reads a third of them back; prints the process's
RSS after each step. Each variant runs in a process of its own, one after the other, in the same run:

  faust      Faust's defaults (64 MB memtables x 3 and a 2 GB block cache for every database)
  each       sizes per database: HERALD_ROCKSDB_WRITE_BUFFER_MB memtables (x 2) and a
             HERALD_ROCKSDB_BLOCK_CACHE_MB cache for every one (Herald before the shared budget)
  shared     Herald's: those memtables, all within HERALD_ROCKSDB_MEMTABLES_MB, and one
             HERALD_ROCKSDB_BLOCK_CACHE_MB cache for the process

    python -m bench.rocksdb_memory --values 1000000
    faust    after writes <MB>, after reads <MB>
    ...
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("faust", "each", "shared")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def run_variant(variant: str, directory: Path, partitions: int, values: int, value_bytes: int) -> dict:
    import faust.stores.rocksdb as rocksdb_store

    from herald.settings import Settings
    from streams import faust_adapter
    from streams.states import store_options

    faust_adapter.install_shared_rocksdb_memory()
    settings = Settings.from_env()
    if variant == "faust":
        options: dict = {}
    else:
        options = store_options(settings)
        if variant == "each":
            options.pop("shared_memory")
            options["block_cache_size"] = 16 * 2**20  # what each database had before the shared cache
    base = rss_mb()
    dbs = {(table, p): rocksdb_store.RocksDBOptions(**dict(options), use_rocksdict=True).open(directory / f"{table}-{p}")
           for table in ("states", "preferences", "presence") for p in range(partitions)}
    value = b"x" * value_bytes
    started = time.perf_counter()
    for i in range(values):
        dbs["states", i % partitions].put(f"bench-user-{i}".encode(), value)
    written = rss_mb() - base
    for i in range(0, values, 3):
        dbs["states", i % partitions].get(f"bench-user-{i}".encode())
    read = rss_mb() - base
    return {"variant": variant, "after_writes_mb": round(written, 1), "after_reads_mb": round(read, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rocksdb_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=1_000_000, help="states written (default 1,000,000)")
    parser.add_argument("--value-bytes", type=int, default=600, help="bytes of each state (default 600)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of each table (default 4)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in its own process
    args = parser.parse_args(argv)
    if args.variant:
        with tempfile.TemporaryDirectory(prefix="herald-rocksdb-") as tmp:
            print(json.dumps(run_variant(args.variant, Path(tmp), args.partitions, args.values, args.value_bytes)))
        return 0
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, "-m", "bench.rocksdb_memory", "--variant", variant,
                              "--values", str(args.values), "--value-bytes", str(args.value_bytes),
                              "--partitions", str(args.partitions)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant:<8} after writes {r['after_writes_mb']:7.1f} MB, after reads {r['after_reads_mb']:7.1f} MB "
              f"({r['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
