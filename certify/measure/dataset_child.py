"""The dataset loader's child: ``python -m certify.measure.dataset_child FOLDER`` reads the pickled request
``(target, layout)`` on stdin, calls the plan's ``module:function`` loader, joins what it returned or yielded and
writes the arrays to ``FOLDER/data.pickle``; a clean failure is ``FOLDER/error.json`` (message, hint), exit 3.

The user's loader runs here, not in the pytest process: a crash, a signal or a hang inside it ends this process
only (``certify.measure.dataset`` turns that into a DatasetError for that model's cases)."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

DATA, ERROR = "data.pickle", "error.json"


def main(folder: Path) -> int:
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a loader's prints go to the log, never into the answer
    from certify.errors import CertifyError
    from certify.measure.dataset import from_loader
    from certify.measure.worker import MEMORY_LIMIT_ENV, limit_memory

    target, layout = pickle.loads(sys.stdin.buffer.read())
    limit_memory()
    try:
        arrays = from_loader(target, layout)
    except CertifyError as exc:
        return _fail(folder, exc.message, exc.hint)
    except MemoryError:
        limit = os.environ.get(MEMORY_LIMIT_ENV, "0")
        return _fail(folder, f"dataset.loader {target!r} ran out of memory"
                     + (f" (the worker limit of {limit} MiB, measure.memory_limit_mib)" if limit != "0" else ""),
                     "load fewer samples (dataset.limit) or raise measure.memory_limit_mib")
    (folder / DATA).write_bytes(pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


def _fail(folder: Path, message: str, hint: str) -> int:
    (folder / ERROR).write_text(json.dumps({"message": message, "hint": hint}), encoding="utf-8")
    return 3


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
