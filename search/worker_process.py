"""A worker process: ``python -m search.worker_process``, started by ``search.worker.spawn``.

It reads its configuration on stdin (never the command line, where other users could read a
password), sets its process-wide settings (``search.devices.tune_process``: its share of the CPU
threads), and runs ``search.study.work`` on the shared study until the study is done. It stops
with its parent. Its exit status tells the supervisor how it ended (``search.worker.EXIT_*``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from search.config import experiment_from_dict
from search.devices import tune_process
from search.errors import StorageUnavailable, guarded, redact_text
from search.storage import answered
from search.study import StudyAborted, work
from search.worker import EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_STORAGE, Slot
from space.errors import SpecError


def _exit_with_parent(parent_pid: int) -> None:
    """Stop this worker (as if by SIGTERM) when the process that started it is gone."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    """Entry point of a worker process (configuration on stdin)."""
    spec = json.loads(sys.stdin.read())
    slot = Slot(**spec["slot"])
    tune_process(slot.threads)
    _exit_with_parent(spec["parent_pid"])

    label = f"w{slot.index}"
    answered(spec["storage"])  # it answered the search that started this worker: a refusal now is an outage
    try:
        cfg = experiment_from_dict(spec["raw"], spec["name"])
        work(cfg, storage_url=spec["storage"], quiet=spec.get("quiet", False), label=label)
    except StudyAborted as e:
        print(f"[{label}] {redact_text(str(e))}", file=sys.stderr)
        return EXIT_ABORTED
    except StorageUnavailable as e:
        print(f"[{label}] stopping: {redact_text(str(e))}", file=sys.stderr)
        return EXIT_STORAGE
    except SpecError as e:
        print(f"[{label}] error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
