"""A study through storage outages: the time each outage costs it, the trainings it loses, and what riding
them out costs when nothing goes wrong.

Outages: a real ``resnext-nas search --workers 2`` on a real PostgreSQL server, reached through
a TCP proxy (``CuttingProxy``) that cuts every connection and refuses new ones for the length of
an outage, as a server restart or failover does to its clients. The same study (same seeds,
trials of a fixed number of seconds) runs once without an outage and once with ``--outages``
outages of ``--outage-s`` seconds, started after the first and third trained networks. Per
outage it reports the length against the study's stall: the extra wall-clock time of the study
divided by the outages, and the longest wait a worker reported ("reachable again after N s").
Trainings lost: trials that trained and did not end COMPLETE (target 0), and networks trained
twice.

Bookkeeping: the storage calls one trial makes (``ask``, the user attributes a trained trial
sets, its ``tell``, a read of the study) timed on the same server, interleaved, with the study's
storage (retries, ``pool_pre_ping``) and with Optuna's plain ``RDBStorage``: the per-trial
cost of riding out outages when there is none.

    RESNEXT_NAS_TEST_POSTGRES=postgresql://... python -m benchmarks.outage            # 2 outages of 20 s
    RESNEXT_NAS_TEST_POSTGRES=postgresql://... python -m benchmarks.outage --quick    # 1 outage of 3 s
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_ENV = "RESNEXT_NAS_TEST_POSTGRES"


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection and refuse new ones (``cut``), then
    accept again on the same port (``restore``): a database server that restarts, seen from its clients.

    Args:
        url: the server's URL (``postgresql://user:pw@host:port/db``); ``url_through`` is the
            same URL through the proxy.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url, self.target = url, (parts.hostname, parts.port or 5432)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    @property
    def url_through(self) -> str:
        parts = urlsplit(self.url)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"))

    def restore(self, url: str | None = None) -> None:
        """Accept connections again (forwarded to ``url``'s host and port when given: a server started anew)."""
        if url is not None:
            parts = urlsplit(url)
            self.target = (parts.hostname, parts.port)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(100):  # the port may still be held for a moment after the cut
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close every connection and stop listening: clients see resets, then refused connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            for s in (src, dst):
                if s in self._open:
                    self._open.discard(s)
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()


# -- the outage scenario --------------------------------------------------------------------------

def study_yaml(tmp: Path, storage: str, n_trials: int, seconds: float, name: str) -> Path:
    """A tiny study (synthetic data, trials of ``seconds`` s) on ``storage``, MLflow on SQLite under ``tmp``."""
    import yaml

    raw = {
        "data": {"dataset": "synthetic", "val_fraction": 0.25},
        "space": {"num_stages": [1, 2, 3], "stem_ch": [4, 8, 16], "bottleneck_ch": [4, 8, 16], "channel_mult": 2,
                  "cardinality": [1, 2, 4], "base_width": [8, 16], "depth": {"low": 1, "high": 2}},
        "objectives": ["val_accuracy", "params"],
        "search": {"n_trials": n_trials, "seed": 0, "sampler": "random", "storage": storage,
                   "study_name": f"{name}-{uuid.uuid4().hex[:8]}", "heartbeat_s": 2},
        "train": {"epochs": 1000, "seconds": seconds, "batch_size": 32, "device": "cpu", "threads": 1},
        "latency": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "artifacts": str(tmp / "artifacts")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _trials(path: Path, url: str):
    import optuna
    import yaml

    from search.storage import open_storage

    s = yaml.safe_load(path.read_text())
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=s["search"]["study_name"], storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def _trained(ts) -> int:
    return sum(t.state.name == "COMPLETE" and t.user_attrs.get("outcome") == "trained" for t in ts)


def run_study(tmp: Path, url: str, n_trials: int, seconds: float, outages: int, outage_s: float) -> dict:
    """One ``resnext-nas search --workers 2`` through a fresh proxy, cut ``outages`` times for ``outage_s``."""
    proxy = CuttingProxy(url)
    path = study_yaml(tmp, proxy.url_through, n_trials, seconds, f"outage{outages}")
    log = tmp / f"outage{outages}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(path), "--workers", "2", "--quiet",
                                 "--export-dir", str(tmp / "exports")], stdout=out, stderr=subprocess.STDOUT, env=env)
    cuts = []
    try:
        for k in range(outages):
            after = 1 + 2 * k  # trained networks before the outage starts
            while _trained(_trials(path, url)) < after and proc.poll() is None:
                time.sleep(0.2)
            if proc.poll() is not None:
                break
            proxy.cut()
            time.sleep(outage_s)
            proxy.restore()
            cuts.append(outage_s)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.cut()
    wall = time.monotonic() - t0
    ts = _trials(path, url)
    text = log.read_text(errors="replace")
    hashes = [t.user_attrs.get("network", {}).get("spec_hash") for t in ts if t.user_attrs.get("outcome") == "trained"]
    lost = sum(t.state.name != "COMPLETE" and "training" in t.user_attrs for t in ts)
    waits = [float(w) for w in re.findall(r"reachable again after (\d+) s", text)]
    return {"exit": code, "wall_s": wall, "outages": cuts, "trained": _trained(ts), "trials": len(ts),
            "lost": lost, "twice": len(hashes) - len(set(hashes)), "waits": waits,
            "states": sorted({t.state.name for t in ts}), "log": text}


# -- bookkeeping with and without the retry layer ---------------------------------------------------

def bookkeeping(url: str, trials: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per trial's storage calls, the study's storage vs Optuna's plain RDBStorage, interleaved."""
    import warnings

    import optuna

    from search.outage import Patience, PatientRDBStorage
    from search.storage import _with_driver, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    stores = {"plain RDBStorage": optuna.storages.RDBStorage(_with_driver(url), heartbeat_interval=30,
                                                                   grace_period=120),
              "with the retry layer": open_storage(url, 30),
              "retries, no pre-ping": PatientRDBStorage(_with_driver(url), Patience("pg", 600),
                                                        engine_kwargs={"pool_pre_ping": False},
                                                        heartbeat_interval=30, grace_period=120)}
    studies = {k: optuna.create_study(storage=s, study_name=f"bk-{uuid.uuid4().hex[:8]}",
                                      directions=["maximize", "minimize"]) for k, s in stores.items()}
    times: dict[str, list[float]] = {k: [] for k in stores}
    dist = optuna.distributions.IntDistribution(1, 4)

    def one_trial(study) -> None:
        trial = study.ask({"cardinality": dist, "depth": dist})
        trial.set_user_attr("worker", {"host": "h", "pid": 1, "start": 1})
        trial.set_user_attr("network", {"spec_name": "x", "spec_hash": uuid.uuid4().hex, "params": 1, "macs": 2})
        trial.set_user_attr("training", {"seed": 1, "threads": 1})
        for epoch in range(1, 4):
            trial.set_user_attr("epochs_done", epoch)
        trial.set_user_attr("metrics", {"val_accuracy": 0.5, "params": 1})
        trial.set_user_attr("curve", {"val_accuracy": [0.5] * 3})
        trial.set_user_attr("outcome", "trained")
        study.tell(trial, [0.5, 1.0])
        study.get_trials(deepcopy=False)

    for study in studies.values():  # warm-up: connections, caches
        one_trial(study)
    for _ in range(rounds):
        for name, study in studies.items():
            t = time.perf_counter()
            for _ in range(trials):
                one_trial(study)
            times[name].append((time.perf_counter() - t) / trials)
    for name, study in studies.items():
        optuna.delete_study(study_name=study.study_name, storage=stores[name])
        stores[name].engine.dispose()
    return times


def main() -> None:
    from benchmarks._report import env_header, footer, median, target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outages", type=int, default=2)
    ap.add_argument("--outage-s", type=float, default=20.0)
    ap.add_argument("--n-trials", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0, help="training seconds of every trial")
    ap.add_argument("--quick", action="store_true", help="1 outage of 3 s, 4 trials of 1 s, fewer bookkeeping rounds")
    args = ap.parse_args()
    if args.quick:
        args.outages, args.outage_s, args.n_trials, args.seconds = 1, 3.0, 4, 1.0
    url = os.environ.get(PG_ENV)
    if not url:
        sys.exit(f"{PG_ENV} is not set: start a PostgreSQL server (.ci/run shows how) and set it")
    from search.errors import redact

    print(env_header())
    print(f"PostgreSQL: {redact(url)}; study: --workers 2, {args.n_trials} trials of {args.seconds:g} s training")

    rounds = 3 if args.quick else 7
    times = bookkeeping(url, 10, rounds)
    plain, patient = median(times["plain RDBStorage"]), median(times["with the retry layer"])
    print(f"\nbookkeeping per trial (ask, 10 attributes, tell, a read; median of {rounds} rounds of 10, interleaved):")
    for name, xs in times.items():
        print(f"  {name:22s} {median(xs) * 1e3:7.2f} ms   (rounds: {', '.join(f'{x * 1e3:.2f}' for x in xs)})")
    print(f"  ratio with / without: {patient / plain:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        base = run_study(Path(tmp), url, args.n_trials, args.seconds, 0, 0.0)
        hit = run_study(Path(tmp), url, args.n_trials, args.seconds, args.outages, args.outage_s)
    for name, r in (("no outage", base), (f"{args.outages} x {args.outage_s:g} s outage", hit)):
        if r["exit"] != 0:
            print(r["log"][-3000:])
        print(f"\n{name}: exit {r['exit']}, {r['wall_s']:.1f} s, {r['trained']} trained of {r['trials']} trials "
              f"(states {', '.join(r['states'])}), trainings lost {r['lost']}, networks trained twice {r['twice']}")
    n = len(hit["outages"])
    if n:
        stall = (hit["wall_s"] - base["wall_s"]) / n
        print(f"\nper outage: {args.outage_s:g} s of outage, the study {stall:.1f} s longer "
              f"(stall / outage = {stall / args.outage_s:.2f}); longest wait a worker reported: "
              f"{max(hit['waits'], default=0):.0f} s ({len(hit['waits'])} 'reachable again' lines)")
    print(target("trainings lost to outages", hit["lost"] == 0 and hit["twice"] == 0 and hit["exit"] == 0,
                 f"{hit['lost']} lost, {hit['twice']} trained twice, exit {hit['exit']}"))
    print(footer())


if __name__ == "__main__":
    main()
