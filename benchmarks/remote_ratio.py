"""Speed ratio through local workers vs the same workers over SSH (issue 17: within 3%). A script, not a test yet.

Run as root from the repository: ``python benchmarks/remote_ratio.py [rounds]``. A namespace board
(``tests.helpers.netns_board``) on this machine; a big and a small MLP, each loaded in a local worker and in a remote
one; blocks of 200 timed iterations, all four workers interleaved (order reversed every round) so machine drift hits
every arm alike; prints the median per-iteration latencies and the big/small ratio per side, and ``run``'s round trip.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from certify.lab.board import Board
from certify.lab.remote import RemoteWorkerClient
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.models import build_mlp
from tests.helpers.netns_board import NamespaceBoard, unavailable


def ref(path: Path) -> ModelRef:
    return ModelRef(name=path.stem, path=path, framework="onnxruntime", threads=1)


def main(rounds: int) -> None:
    if why := unavailable():
        sys.exit(f"no namespace board: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="remote-ratio-"))
    small, big = build_mlp(tmp / "small.onnx"), build_mlp(tmp / "big.onnx", widths=(16, 512, 512, 4), seed=2)
    ns = NamespaceBoard(tmp / "ns", 7).start()
    board = Board("bench", ns.address, ns.port, identity_file=ns.client_key, python=sys.executable,
                  cache_dir=str(tmp / "cache"), known_hosts=ns.known_hosts, ssh_config="none")
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    workers: dict[tuple[str, Path], WorkerClient] = {}
    try:
        for side, model in itertools.product(("local", "ssh"), (big, small)):
            worker = WorkerClient("c", ref(model), 60) if side == "local" else RemoteWorkerClient(
                "c", ref(model), 60, board)
            worker.call("load", ref=ref(model))
            worker.call("feeds", key="k", arrays={"": x})
            worker.call("run", key="k", iterations=500)
            workers[side, model] = worker
        times: dict[tuple[str, Path], list[np.ndarray]] = {k: [] for k in workers}
        for n in range(rounds):
            for key in (list(workers) if n % 2 == 0 else list(reversed(workers))):
                times[key].append(workers[key].call("run", key="k", iterations=200))
        for side in ("local", "ssh"):
            med = {m: float(np.median(np.concatenate(times[side, m]))) for m in (big, small)}
            trips = []
            for _ in range(200):
                start = time.perf_counter()
                workers[side, small].call("run", key="k", iterations=1)
                trips.append(time.perf_counter() - start)
            print(f"{side}: median big {med[big] / 1e3:.2f} us, small {med[small] / 1e3:.2f} us, "
                  f"ratio {med[big] / med[small]:.3f}; run(1) round trip {statistics.median(trips) * 1e6:.0f} us")
    finally:
        for worker in workers.values():
            worker.close()
        ns.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
