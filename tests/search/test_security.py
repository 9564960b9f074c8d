"""Safe by default: no unsafe deserialisation, no password in any output, the dashboard on loopback."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tokenize
import urllib.request
from pathlib import Path

import pytest

from search.cli import main
from search.errors import guarded, redact_text, redact_tree
from search.study import run_search

from .procs import experiment, postgres_url, search, training, wait_for

ROOT = Path(__file__).parents[2]
SECRET = "s3cr3t-Pa55"


def code_files():
    return sorted(p for d in ("search", "space") for p in (ROOT / d).rglob("*.py"))


def code_only(path: Path) -> str:
    """The file's source without its comments and string literals (docstrings may name pickle)."""
    with open(path, "rb") as f:
        tokens = [t for t in tokenize.tokenize(f.readline) if t.type not in (tokenize.COMMENT, tokenize.STRING)]
    return " ".join(t.string for t in tokens)


def unsafe_loading(path: Path) -> list[str]:
    """yaml.load & co, pickle-like modules, torch.load without weights_only=True in ``path``'s code."""
    text, found = code_only(path), []
    for pattern in (r"\byaml \. (load|unsafe_load|full_load|load_all) \(", r"\bLoader = yaml\b",
                    r"\b(c?[Pp]ickle|dill|cloudpickle|shelve|marshal)\b", r"\bjoblib \. load\b"):
        found += [m.group(0) for m in re.finditer(pattern, text)]
    for m in re.finditer(r"\btorch \. load \(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        if not re.search(r"\bweights_only = True\b", text[m.end():i]):
            found.append("torch.load without weights_only=True")
    return found


def test_no_unsafe_deserialisation_in_the_code():
    """yaml.safe_load only, no pickle, torch.load only with weights_only=True (search/ and space/)."""
    problems = {str(p.relative_to(ROOT)): unsafe_loading(p) for p in code_files()}
    assert len(problems) > 10 and not {k: v for k, v in problems.items() if v}


def test_the_scan_catches_unsafe_loading(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""pickle in a docstring is fine"""\nimport pickle  # so is pickle in a comment\n'
                   "cfg = yaml.load(open(p), Loader=yaml.FullLoader)\n"
                   "w = torch.load(f, map_location='cpu')\nok = torch.load(f, weights_only=True)\n")
    assert unsafe_loading(bad) == ["yaml . load (", "Loader = yaml", "pickle",
                                   "torch.load without weights_only=True"]


def test_redaction_finds_passwords_in_any_text():
    text = f"could not connect to postgresql+psycopg2://nas:{SECRET}@db:5432/nas (http://u:{SECRET}/x@h:5000)"
    assert SECRET not in redact_text(text)
    assert "postgresql+psycopg2://nas:***@db:5432/nas" in redact_text(text)
    raw = {"search": {"storage": f"postgresql://nas:{SECRET}@db/nas"}, "tracking": {"uri": "sqlite:///m.db"},
           "space": {"depth": [1, 2]}}
    assert redact_tree(raw) == {"search": {"storage": "postgresql://nas:***@db/nas"},
                                "tracking": {"uri": "sqlite:///m.db"}, "space": {"depth": [1, 2]}}


def test_cli_errors_hide_passwords(tmp_path, capsys, monkeypatch):
    path = experiment(tmp_path)
    # a PostgreSQL server that is not there
    assert main(["search", str(path), "--storage", f"postgresql://nas:{SECRET}@127.0.0.1:9/nas"]) == 2
    err = capsys.readouterr().err
    assert "postgresql://nas:***@127.0.0.1:9/nas" in err and SECRET not in err
    # an MLflow server that is not there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["search", str(path), "--tracking-uri", f"http://nas:{SECRET}@127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "http://nas:***@127.0.0.1:9" in err and SECRET not in err

    # an unexpected error: its traceback is printed, redacted
    def boom():
        raise ValueError(f"bad URL postgresql://nas:{SECRET}@db/nas")
    assert guarded(boom) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "postgresql://nas:***@db/nas" in err and SECRET not in err


@pytest.mark.slow
def test_logged_experiment_is_redacted(tiny):
    cfg = tiny(search={"n_trials": 1})
    cfg.raw["search"]["note"] = f"postgresql://nas:{SECRET}@db/nas"  # as the storage URL would be logged
    summary = run_search(cfg, quiet=True)
    client = summary.tracker.client
    text = Path(client.download_artifacts(summary.parent_id, "experiment.json")).read_text()
    assert SECRET not in text and json.loads(text)["search"]["note"] == "postgresql://nas:***@db/nas"


@pytest.mark.slow
def test_a_password_in_the_storage_url_is_nowhere_to_be_found(tmp_path):
    """A real PostgreSQL study with a password: not in the output, MLflow, artifacts, exports or argv."""
    base = postgres_url()
    password = re.match(r"postgresql://[^:]+:([^@]+)@", base)
    if not password:
        pytest.skip("the test server has no password in its URL")
    password = password.group(1)
    path = experiment(tmp_path, storage=base, search={"n_trials": 2, "study_name": f"sec-{time.time_ns()}"},
                      train={"epochs": 1000, "seconds": 0.5})
    proc = search(path, "--workers", "2")
    first = wait_for(lambda: training(path, base), 60, "a trial in training", (proc,))[0]
    argv = Path(f"/proc/{first.user_attrs['worker']['pid']}/cmdline").read_bytes().decode(errors="replace")
    assert "search.worker_process" in argv and password not in argv  # a worker's configuration comes on stdin
    assert proc.wait() == 0, proc.output()

    assert password not in proc.output()
    everything = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert any(p.name == "mlflow.db" for p in everything) and any(p.name == "experiment.json" for p in everything)
    for p in everything:
        assert password.encode() not in p.read_bytes(), p
    exported = list((tmp_path / "exports").glob("*.yaml"))
    assert exported and all(password not in p.read_text() for p in exported)
    logged = next(p for p in everything if p.name == "experiment.json").read_text()
    assert ":***@" in logged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) that listen on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.slow
def test_ui_listens_on_loopback_only(tmp_path):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp (Linux) to see what the process listens on")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port), "--tracking-uri",
                             f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        deadline = time.monotonic() + 90
        while not up():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the dashboard did not answer within 90 s"
            time.sleep(0.5)
        addresses = listening(port)
        assert addresses == {"0100007F"}, addresses  # 127.0.0.1 only: not 0.0.0.0, not ::
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the mlflow server it started, if still there
            except ProcessLookupError:
                pass
    wait_for(lambda: not listening(port), 10, "the dashboard's port closed")
