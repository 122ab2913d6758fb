"""Episode results: one JSON line per finished episode, appended atomically, never twice.

Several processes (vectorised runs, Ray workers, a resumed run) may append to the same file:
every append takes an exclusive ``fcntl`` lock, reads the keys written since its previous append
(another process may have finished the same episode meanwhile), writes one complete line with a single
``write`` and ``fsync``s it. A process killed mid-write can leave at most one partial last
line; readers ignore it and the next append cuts it off before writing, so a killed run never
loses a finished episode nor leaves a corrupt record.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive lock between processes of one machine (and of a shared file system that locks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


KEY_FIELDS = ("config_hash", "suite", "task_id", "episode")
REQUIRED_FIELDS = KEY_FIELDS + ("success", "steps")


def episode_key(record_or_item: Any) -> tuple:
    """(config hash, suite, task id, episode index) of a record dict or an ``EpisodeItem``."""
    get = record_or_item.get if isinstance(record_or_item, dict) else lambda k: getattr(record_or_item, k)
    try:
        h, suite, task, episode = (get(k) for k in KEY_FIELDS)
    except AttributeError as e:
        raise ValueError(f"cannot build an episode key from {type(record_or_item).__name__}: {e}") from e
    if h is None or suite is None or task is None or episode is None:
        raise ValueError(f"episode key needs {KEY_FIELDS}, got {record_or_item!r}")
    return str(h), str(suite), int(task), int(episode)


def _parse(data: bytes, path: Path, start: int = 0) -> tuple[list[dict], int]:
    """Complete records, and the byte length of the valid prefix (a torn last line excluded).

    ``data`` is the file from byte ``start`` on (for error messages)."""
    records, good = [], 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # torn write of a killed process: ignored, cut off by the next append
            break
        line = data[pos:end].strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: corrupt record at byte {start + pos}: {e}") from e
        pos = good = end + 1
    return records, good


class ResultsStore:
    """Append-only JSONL file of episode records keyed by :func:`episode_key`."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"results path {path} is a directory; pass a .jsonl file")
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        # Keys of the file's first _parsed bytes, so an append reads only what was added since the
        # last one (re-reading the whole file on every append was quadratic in the run's length).
        self._keys: set[tuple] = set()
        self._parsed = 0
        self._file_id: tuple | None = None  # (device, inode) the cache belongs to

    def _locked(self):
        return file_lock(self.lock_path)

    def _read(self) -> tuple[list[dict], int, int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0, 0
        records, good = _parse(data, self.path)
        return records, good, len(data)

    def _stored_keys(self) -> tuple[set[tuple], int, int]:
        """(keys in the file, length of its valid prefix, its size), reading only the bytes appended
        since the previous call. Called under the lock."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._file_id or st.st_size < self._parsed:  # replaced or cut
                    self._keys, self._parsed, self._file_id = set(), 0, (st.st_dev, st.st_ino)
                f.seek(self._parsed)
                data = f.read()
        except FileNotFoundError:
            self._keys, self._parsed, self._file_id = set(), 0, None
            return self._keys, 0, 0
        records, good = _parse(data, self.path, self._parsed)
        self._keys.update(episode_key(r) for r in records)
        size = self._parsed + len(data)
        self._parsed += good
        return self._keys, self._parsed, size

    def records(self) -> list[dict]:
        return self._read()[0]

    def done_keys(self) -> set[tuple]:
        return {episode_key(r) for r in self.records()}

    def append(self, record: dict) -> bool:
        """Write ``record`` unless its key is already stored; True if it was written."""
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise ValueError(f"episode record lacks {missing}")
        key = episode_key(record)
        line = (json.dumps(record, sort_keys=True, default=_jsonable) + "\n").encode()
        with self._locked():
            keys, good, size = self._stored_keys()
            if key in keys:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if good != size:
                    os.ftruncate(fd, good)
                os.lseek(fd, good, os.SEEK_SET)
                os.write(fd, line)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            keys.add(key)
            self._parsed, self._file_id = good + len(line), (st.st_dev, st.st_ino)
        return True

    def __len__(self) -> int:
        return len(self.records())

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"cannot write {type(v).__name__} to a results record")


def load_records(paths: list[str | Path]) -> list[dict]:
    """All records of the given .jsonl files and directories (searched recursively), deduplicated."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results file or directory at {p}")
    seen, out = set(), []
    for f in files:
        for r in ResultsStore(f).records():
            try:
                k = episode_key(r)
            except ValueError:
                continue
            if k not in seen:
                seen.add(k)
                out.append(r)
    return out


__all__ = ["ResultsStore", "episode_key", "load_records", "KEY_FIELDS"]
