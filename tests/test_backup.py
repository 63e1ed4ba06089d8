"""`bot.backup`: a copy taken while the web process writes is a consistent snapshot that the
Store opens as it opens the real database; the copy is private and never clobbers a file."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from bot.backup import BackupError, backup
from bot.model import Deployment, PreviewKey
from bot.store import Store

from .harness import wait_for

KEYS = [PreviewKey("octo/app", 1), PreviewKey("octo/app", 2), PreviewKey("octo/app", 2, "staging")]


def new_store(path) -> Store:
    store = Store(str(path))
    store.migrate()
    return store


def record(store: Store, n: int) -> Deployment:
    """One deployment, with its event and as its environment's current one: one transaction."""
    key = KEYS[n % len(KEYS)]
    deployment = Deployment.new(repository=key.repository, pr_number=key.pr_number, environment=key.environment, branch_name=f"feat/{n}")
    store.record_deployment(deployment, f"{n + 1}-0", "requested")
    return deployment


def test_a_backup_taken_during_writes_restores_a_consistent_snapshot(tmp_path):
    source = new_store(tmp_path / "previewbot.db")
    written = [record(source, n).id for n in range(200)]  # pages to copy before the race starts
    stop = threading.Event()

    def writer():
        # Its own Store, as the web process's recorder would be: a connection of its own.
        store = Store(source.path)
        n = len(written)
        while not stop.is_set():
            written.append(record(store, n).id)  # appended once committed
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(written) >= 250, timeout=30, message="the writer to get going")
        committed_before = len(written)
        target = backup(source.path, tmp_path / "copy.db")
        wait_for(lambda: len(written) >= committed_before + 50, timeout=30, message="writes after the backup")
    finally:
        stop.set()
        thread.join()

    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("copy.db")] == ["copy.db"]  # one file
    restored = new_store(target)  # migrations: nothing to do, the copy is at the same version
    ids = [row["id"] for row in restored.db.query("SELECT id FROM deployments")]
    copied = len(ids)
    assert committed_before <= copied < len(written)
    assert set(ids) == set(written[:copied])  # a prefix of the commits: nothing torn, nothing skipped
    for deployment_id in ids:
        assert restored.get_deployment(deployment_id) == source.get_deployment(deployment_id)
        assert [e["status"] for e in restored.deployment_events(deployment_id)] == ["deploying"]
    for index, key in enumerate(KEYS):
        last = max(n for n in range(copied) if n % len(KEYS) == index)
        assert restored.latest_deployment(key).id == written[last]


def test_the_copy_is_readable_by_its_owner_only(tmp_path):
    source = new_store(tmp_path / "previewbot.db")
    record(source, 0)
    previous = os.umask(0)
    try:
        target = backup(source.path, tmp_path / "copy.db")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_an_existing_file_is_kept_unless_told(tmp_path):
    source = new_store(tmp_path / "previewbot.db")
    first = record(source, 0)
    target = tmp_path / "copy.db"
    target.write_text("yesterday's backup")
    with pytest.raises(BackupError, match="exists"):
        backup(source.path, target)
    assert target.read_text() == "yesterday's backup"

    backup(source.path, target, overwrite=True)
    assert new_store(target).get_deployment(first.id) == source.get_deployment(first.id)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial copy left


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(BackupError, match="DATABASE_PATH"):
        backup(tmp_path / "nope.db", tmp_path / "copy.db")
    assert list(tmp_path.iterdir()) == []


def test_the_database_itself_is_never_a_target(tmp_path):
    source = new_store(tmp_path / "previewbot.db")
    with pytest.raises(BackupError, match="database itself"):
        backup(source.path, tmp_path / "previewbot.db", overwrite=True)


def test_a_damaged_database_fails_the_check_and_leaves_no_copy(tmp_path):
    source = new_store(tmp_path / "previewbot.db")
    for n in range(300):
        record(source, n)
    source.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = source.db.execute("PRAGMA page_size").fetchone()[0]
    pages = source.db.execute("PRAGMA page_count").fetchone()[0]
    source.release()
    with open(source.path, "r+b") as raw:  # scribble over the pages past the schema
        raw.seek(page_size * (pages // 2))
        raw.write(b"\xff" * page_size * 4)
    with pytest.raises(BackupError, match="integrity check"):
        backup(source.path, tmp_path / "copy.db")
    assert not any(p.name.startswith((".copy.db", "copy.db")) for p in tmp_path.iterdir())
