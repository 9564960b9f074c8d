"""Dashboard footprint: processes and memory of ``resnext-nas ui`` vs the ``mlflow ui`` it used to start.

Both serve the same MLflow store (SQLite, made once before either starts) on free loopback ports,
one after the other. The measured one is the real command, ``resnext-nas ui --tracking-uri URI
--port P``: one uvicorn worker, no job runner, and the command's own process replaced by the
server's (exec). The baseline is the server the command started before it started only what
browsing needs: ``mlflow ui --backend-store-uri URI --host 127.0.0.1 --port P`` with MLflow's
defaults (4 uvicorn workers; the job runner and its huey consumers). The old command also kept its
own process waiting beside it (mlflow imported, about 250 MB); the baseline leaves it out, so the
ratios understate the saving.

For each: start it, wait until ``/health`` answers, browse (the UI's page and an experiment
search), then wait until the process tree has kept the same processes for ``--settle`` seconds
(the job runner starts its consumers after the server), and read every process of the tree from
/proc: the count, the sum of RSS (shared pages counted once per process, as ``ps`` shows them)
and the sum of PSS (shared pages split between the processes that map them: what the tree
really holds). Linux only (/proc).

    python -m benchmarks.ui_footprint            # both, 10 s of settling
    python -m benchmarks.ui_footprint --quick    # CI smoke: 3 s of settling
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks._report import env_header, footer

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children() -> dict[int, list[int]]:
    """ppid -> pids of every process on the machine (from /proc/PID/stat)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids, out, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) when it has gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.split()[1:2]}
    return fields.get("Rss", 0), fields.get("Pss", 0)


def command_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode()).name if i == 0 else a.decode() for i, a in enumerate(argv[:4]) if a]
    return " ".join(words)[:60]


def get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (loopback only)
        return r.read()


def measure(label: str, cmd: list[str], port: int, settle: float, log: Path) -> dict:
    """Start ``cmd``, browse it, wait for its process tree to settle, read its footprint, stop it."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        t0 = time.perf_counter()
        base = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                get(f"{base}/health")
                break
            except OSError:
                if time.perf_counter() - t0 > 180:
                    raise RuntimeError(f"{label}: no answer in 180 s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        up = time.perf_counter() - t0
        page = get(f"{base}/")
        search = json.loads(get(f"{base}/ajax-api/2.0/mlflow/experiments/search",
                                json.dumps({"max_results": 10}).encode()))
        assert b"<html" in page.lower() and "experiments" in search, "the UI did not answer as a browser expects"
        pids, stable = tree(proc.pid), time.perf_counter()
        deadline = stable + max(60.0, 4 * settle)
        while time.perf_counter() - stable < settle and time.perf_counter() < deadline:
            time.sleep(0.5)
            now = tree(proc.pid)
            if set(now) != set(pids):
                pids, stable = now, time.perf_counter()
        mem = {p: memory_kb(p) for p in pids}
        return {"label": label, "up_s": up, "processes": len([p for p in mem if mem[p][0]]),
                "rss_mb": sum(r for r, _ in mem.values()) / 1024, "pss_mb": sum(s for _, s in mem.values()) / 1024,
                "each": sorted(((command_of(p), r / 1024) for p, (r, _) in mem.items() if r), key=lambda x: -x[1])}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "uvicorn", "huey", "fastapi"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 3 s of settling instead of 10")
    parser.add_argument("--settle", type=float, default=None, help="seconds the process tree must stay the same")
    args = parser.parse_args(argv)
    settle = args.settle or (3.0 if args.quick else 10.0)
    print(env_header("cpu"))
    print(f"packages:    {versions()}")
    tmp = Path(tempfile.mkdtemp(prefix="ui_footprint_"))
    try:
        from mlflow.tracking import MlflowClient

        from search.tracking import quiet_mlflow

        quiet_mlflow()
        uri = f"sqlite:///{tmp}/mlflow.db"
        MlflowClient(uri).search_experiments()  # the store made (and migrated) once, before either server
        mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
        port_a, port_b = free_port(), free_port()
        baseline = measure("mlflow ui (MLflow's defaults; what `resnext-nas ui` started before)",
                           [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port_a)],
                           port_a, settle, tmp / "baseline.log")
        light = measure("resnext-nas ui (browsing only)",
                        [sys.executable, "-m", "search.cli", "ui", "--tracking-uri", uri, "--port", str(port_b)],
                        port_b, settle, tmp / "light.log")
        print(f"\nstore: {uri} (empty); each server browsed (/, experiments/search), then its process tree left "
              f"{settle:g} s without change; memory from /proc/PID/smaps_rollup")
        for r in (baseline, light):
            print(f"\n{r['label']}: up in {r['up_s']:.1f} s")
            print(f"  processes {r['processes']:>3}   RSS sum {r['rss_mb']:8.0f} MB   PSS sum {r['pss_mb']:8.0f} MB")
            for name, mb in r["each"]:
                print(f"    {mb:7.0f} MB  {name}")
        print(f"\nratio       processes: {baseline['processes'] / light['processes']:.1f}x fewer "
              f"({baseline['processes']} -> {light['processes']})")
        print(f"ratio       RSS sum:   {baseline['rss_mb'] / light['rss_mb']:.1f}x less "
              f"({baseline['rss_mb']:.0f} -> {light['rss_mb']:.0f} MB)")
        print(f"ratio       PSS sum:   {baseline['pss_mb'] / light['pss_mb']:.1f}x less "
              f"({baseline['pss_mb']:.0f} -> {light['pss_mb']:.0f} MB)")
        print(footer())
        return {"baseline": baseline, "light": light}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
