"""A copy of the SQLite database taken while previewbot runs (`previewbot backup PATH`).

Copying the file with `cp` while the web process writes can catch a transaction half-way and
misses what still sits in the `-wal` file. SQLite's online backup API copies a consistent
snapshot instead: in one step, under a read transaction, which in WAL mode never blocks the
web process's writers.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


class BackupError(Exception):
    """The backup was not made; the message says why and what to do."""


def backup(database_path: str | os.PathLike, target_path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy the database at `database_path` to `target_path` and check the copy.

    The copy is readable by its owner only (it holds every deployment and the API tokens'
    hashes) and is one self-contained file (no `-wal` beside it). It appears at `target_path`
    only once it passed `PRAGMA integrity_check`; an existing file there is kept unless
    `overwrite`. Returns the target's path.
    """
    source_path, target = Path(database_path), Path(target_path)
    if not source_path.is_file():
        raise BackupError(f"no database at {source_path}: check DATABASE_PATH")
    if not target.parent.is_dir():
        raise BackupError(f"no directory {target.parent} to write the backup in")
    if target.exists() and target.resolve() == source_path.resolve():
        raise BackupError(f"{target} is the database itself: choose another path")
    if target.exists() and not overwrite:
        raise _exists(target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    # Created 0600 before SQLite opens it, so the data is never readable by others, whatever the umask.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        _copy(source_path, partial)
        if overwrite:
            os.replace(partial, target)
        else:
            # A hard link fails if the target appeared meanwhile: never a silent overwrite.
            try:
                os.link(partial, target)
            except FileExistsError:
                raise _exists(target) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _exists(target: Path) -> BackupError:
    return BackupError(f"{target} exists: choose another path, or overwrite it on purpose (--overwrite)")


def _copy(source_path: Path, target: Path) -> None:
    # mode=rw: a wrong path is an error, never a new empty database where the real one should be.
    source = sqlite3.connect(f"{source_path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)  # all pages in one step: one consistent snapshot
        copy.execute("PRAGMA journal_mode=DELETE")  # one file, whatever the source's mode
        try:
            problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            raise BackupError(
                f"the copy of {source_path} failed SQLite's integrity check ({'; '.join(problems[:3])}); "
                "the database itself may be damaged: keep your last good backup"
            )
    finally:
        copy.close()
        source.close()
