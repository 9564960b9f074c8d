"""The SQLite WAL variant is scoped: only the listed database files, only inside the block."""

from sqlalchemy import create_engine, text

from benchmarks._proposals import sqlite_files, sqlite_wal


def journal_mode(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            return conn.execute(text("PRAGMA journal_mode")).scalar()
    finally:
        engine.dispose()


def test_sqlite_wal_only_touches_the_listed_files_inside_the_block(tmp_path):
    study, other, after = tmp_path / "study.db", tmp_path / "other.db", tmp_path / "after.db"
    with sqlite_wal([study]):
        assert journal_mode(f"sqlite:///{study}") == "wal"
        assert journal_mode(f"sqlite:///{other}") == "delete"  # another engine of the process
        assert journal_mode("sqlite://") == "memory"
    assert journal_mode(f"sqlite:///{after}") == "delete"  # the listener is gone after the block


def test_sqlite_wal_without_paths_applies_to_every_sqlite_file(tmp_path):
    with sqlite_wal():
        assert journal_mode(f"sqlite:///{tmp_path / 'a.db'}") == "wal"


def test_sqlite_files_of_the_default_and_an_all_sqlite_config(tmp_path):
    from benchmarks._workloads import tiny_study

    assert sqlite_files(tiny_study(tmp_path, 1)) == [f"{tmp_path}/mlflow.db"]  # Optuna on the journal file
    assert sqlite_files(tiny_study(tmp_path, 1, storage="sqlite")) == [f"{tmp_path}/optuna.db", f"{tmp_path}/mlflow.db"]
