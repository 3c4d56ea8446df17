"""Group commit of C-STOREs, measured: the node's receive path in this process (its
pynetdicom SCP, handler and :class:`~pacs_node.ingest.Receiver`), with the group commit
and with one commit per instance, rounds alternated, dcmtk's storescu sending the same
series over 1 or 4 parallel associations.

Usage: python bench/group_commit.py --slices 256 --rounds 4 --database sqlite postgresql \
           --out bench/results/group-commit-cpu-2cores.json

"Per instance" stores each instance alone exactly as a caller alone would through the
group commit (the same checks, write and transaction), so the two differ only in
grouping. PostgreSQL is the test server (a fresh database per round, dropped after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pynetdicom import AE, AllStoragePresentationContexts, evt  # noqa: E402

from pacs_node.db.migrate import upgrade  # noqa: E402
from pacs_node.db.repository import JobRepository  # noqa: E402
from pacs_node.db.session import make_engine, make_session_factory  # noqa: E402
from pacs_node.ingest import IngestResult, Item, Origin, Receiver  # noqa: E402
from pacs_node.routing import Routing  # noqa: E402
from pacs_node.scp.handlers import handle_store  # noqa: E402
from pacs_node.scp.server import TRANSFER_SYNTAXES  # noqa: E402
from pacs_node.sockets import CONNECTION_HANDLERS  # noqa: E402
from pacs_node.storage import InstanceStore  # noqa: E402
from tests.helpers.postgres import postgres_database  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.peers import free_port  # noqa: E402


class _OneAtATime:
    """Stands in for the group commit: every instance committed alone."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.batches = 0
        self.largest = 1
        self._lock = threading.Lock()

    def submit(self, item: tuple[Item, Origin]) -> IngestResult:
        with self._lock:  # called from every association's thread
            self.batches += 1
        return self.receiver._store_group([item])[0]


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    """A fresh, migrated job database: a SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        url = f"sqlite:///{work / 'jobs.sqlite'}"
        upgrade(url)
        yield url
        return
    with postgres_database("pacs_node_bench") as url:
        upgrade(url)
        yield url


def one_round(folders: Sequence[Path], kind: str, grouped: bool, work: Path) -> dict:
    """Send ``folders`` (one association each, at once) to a fresh receiver; seconds from
    the first storescu start to the last exit, and how many commits stored them."""
    with database(kind, work) as url:
        engine = make_engine(url)
        try:
            receiver = Receiver(InstanceStore(work / "data"),
                                JobRepository(make_session_factory(engine)),
                                Routing.simple("ENHANCE", "identity"))  # fmt: skip
            if not grouped:
                receiver.group = _OneAtATime(receiver)  # type: ignore[assignment]
            ae = AE("ENHANCE")
            ae.maximum_pdu_size = 0  # as the node's default
            for context in AllStoragePresentationContexts:
                ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
            port = free_port()
            handlers = [(evt.EVT_C_STORE, handle_store, [receiver]), *CONNECTION_HANDLERS]
            server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
            try:
                started = time.perf_counter()
                senders = [
                    subprocess.Popen(["storescu", "-aec", "ENHANCE", "+sd", "+r", "127.0.0.1",
                                      str(port), str(folder)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
                    for folder in folders
                ]  # fmt: skip
                for sender in senders:
                    _, err = sender.communicate(timeout=600)
                    if sender.returncode != 0:
                        raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
                seconds = time.perf_counter() - started
            finally:
                server.shutdown()
            [job] = receiver.repository.list_jobs()
            stored = job.instance_count
        finally:
            engine.dispose()
    return {"seconds": seconds, "instances": stored, "commits": receiver.group.batches,
            "largest_commit": receiver.group.largest}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgresql"],
                        default=["sqlite"])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"  # storescu sends without Nagle's delay, as in bench/ingest.py
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:
        work = Path(tmp)
        series = make_ct_series(work / "series", n_slices=args.slices, rows=512, cols=512)
        size_mb = sum(f.stat().st_size for f in (work / "series").rglob("*.dcm")) / 1e6
        files = sorted((work / "series").rglob("*.dcm"))
        split: dict[int, list[Path]] = {}  # the files of each association, by count
        for count in args.associations:
            for index in range(count):
                folder = work / f"x{count}" / str(index)
                folder.mkdir(parents=True)
                for source in files[index::count]:
                    (folder / source.name).symlink_to(source)
                split.setdefault(count, []).append(folder)
        for kind in args.database:
            for count, folders in split.items():
                for round_index in range(args.rounds):
                    # Alternated, and which goes first alternates too.
                    order = [True, False] if round_index % 2 == 0 else [False, True]
                    for grouped in order:
                        key = f"{kind} x{count} {'group commit' if grouped else 'per instance'}"
                        with tempfile.TemporaryDirectory(dir=work) as round_dir:
                            row = one_round(folders, kind, grouped, Path(round_dir))
                        if row["instances"] != len(series):
                            raise RuntimeError(f"{key}: {row['instances']} of {len(series)} stored")
                        results.setdefault(key, {"rounds": []})["rounds"].append(row)
                        print(f"round {round_index + 1} {key:40s} {row['seconds']:.2f} s, "
                              f"{row['commits']} commits", flush=True)  # fmt: skip
    table = {}
    for key, value in results.items():
        seconds = [r["seconds"] for r in value["rounds"]]
        table[key] = {
            "median_s": statistics.median(seconds),
            "seconds": seconds,
            "commits": [r["commits"] for r in value["rounds"]],
            "largest_commit": max(r["largest_commit"] for r in value["rounds"]),
        }
    print(f"\n{'receiver':40s} median   commits")
    for key, row in table.items():
        print(f"{key:40s} {row['median_s']:5.2f} s  {statistics.median(row['commits']):.0f}")
    report = {
        "benchmark": "group commit of C-STOREs, in-process receive path (bench/group_commit.py)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "command": " ".join(["python", "bench/group_commit.py", *sys.argv[1:]]),
        "series": {
            "instances": args.slices,
            "megabytes": round(size_mb, 1),
            "rows": 512,
            "columns": 512,
        },
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
