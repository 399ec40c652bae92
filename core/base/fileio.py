"""Safe file operations: atomic writes, contained paths, filtered archive extraction, downloads, file digests.

Every file Flower Probe writes goes through ``atomic_write``: the data lands in a temporary file in
the same folder and is renamed over the target only when complete, so a crash, a kill -9 or a full
disk leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import socket
import sqlite3
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from core.base.errors import MissingFileError, UnsafePathError, WorkspaceWriteError
from core.base.progress import ProgressCallback, RateMeter, report

# errno values of a full or read-only disk, a quota, or a folder the process may not write.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})
# SQLite's primary result codes for the same conditions (extended codes carry them in the low byte).
_DISK_SQLITE_CODES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR}
)


def _disk_reason(exc: Exception) -> str | None:
    """Why ``exc`` is a full or read-only disk, or None when it is some other error."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return str(exc) if code is not None and code & 0xFF in _DISK_SQLITE_CODES else None
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return os.strerror(exc.errno)
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full or read-only disk inside the block into ``WorkspaceWriteError`` naming ``path`` and what to do.

    Covers ``OSError`` (disk full, read-only file system, quota, permission) and SQLite's equivalents;
    every other error passes through unchanged. The one place Flower Probe words this message.
    """
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        reason = _disk_reason(exc)
        if reason is None:
            raise
        raise WorkspaceWriteError(
            f"Could not write {path}: {reason}. Free some disk space or make the workspace writable "
            f"(set FLOWER_PROBE_WORKSPACE to another folder); files saved earlier are unchanged."
        ) from exc


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    Disk-full and permission errors become ``WorkspaceWriteError`` with a message saying what to do.
    """
    target = Path(path)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def contained_path(root: str | os.PathLike, candidate: str | os.PathLike) -> Path:
    """Resolve ``candidate`` (relative to ``root`` or absolute) and insist it stays inside ``root``.

    Symlinks are resolved first, so a link that leads out of ``root`` is refused like ``..`` is.
    """
    root_path = Path(root).resolve()
    raw = Path(candidate).expanduser()
    resolved = (raw if raw.is_absolute() else root_path / raw).resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise UnsafePathError(
            f"{str(candidate)!r} is outside the data root {root_path}. "
            f"Put the dataset folder under the data root (or set FLOWER_PROBE_DATA_ROOT) and choose it from there."
        )
    return resolved


def _member_filter() -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    base_filter = tarfile.data_filter

    def refuse(member: tarfile.TarInfo, reason: object) -> UnsafePathError:
        return UnsafePathError(
            f"Refusing to extract archive member {member.name!r}: {reason}. The archive is damaged or hostile; "
            f"download it again from the official source."
        )

    def member_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        # The data filter would quietly strip a leading "/"; an official archive never has one, so refuse it.
        if member.name.startswith(("/", "\\")) or ".." in Path(member.name).parts:
            raise refuse(member, "absolute name or '..' in its path")
        try:
            return base_filter(member, dest_path)
        except tarfile.FilterError as exc:
            raise refuse(member, exc) from exc

    return member_filter


def safe_extract_tar(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extract a tar archive, refusing members with absolute names, ``..``, or links leading out.

    Uses the standard library's ``data`` filter (PEP 706), which also drops device files and
    set-uid bits, and turns its refusals into ``UnsafePathError``.
    """
    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter=_member_filter())


_HASH_CHUNK = 8 << 20  # bytes per read while hashing; a progress event per chunk
# (algorithm, absolute path, size, mtime_ns) -> hex digest: an unchanged file is read once per process.
_DIGESTS: dict[tuple[str, str, int, int], str] = {}


def _digest_key(path: str | os.PathLike, algorithm: str) -> tuple[str, str, int, int]:
    """``(algorithm, absolute path, size, mtime_ns)``: one ``stat``, no path parsing for an absolute path."""
    text = os.fspath(path)
    stat = os.stat(text)
    return algorithm, text if os.path.isabs(text) else os.path.abspath(text), stat.st_size, stat.st_mtime_ns


def _hash_file(
    path: str | os.PathLike, algorithm: str, size: int, progress: ProgressCallback | None, stage: str
) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:  # the message costs a path parse: 100k small files feel it
                report(progress, stage, done, size, message=f"Checking {Path(path).name}")
    return digest.hexdigest()


def file_digest(
    path: str | os.PathLike,
    algorithm: str = "sha256",
    *,
    progress: ProgressCallback | None = None,
    stage: str = "hash",
) -> str:
    """Hex digest of the file's bytes, remembered per (path, size, modification time) in this process.

    So a dataset of thousands of files is read once, and later calls only ``stat`` it; a copied or
    touched file is read again and, its bytes unchanged, gives the same digest. Reports ``stage``
    progress every 8 MiB (weights files run to hundreds of MB).
    """
    key = _digest_key(path, algorithm)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(path, algorithm, key[2], progress, stage)
    return _DIGESTS[key]


def file_digests(
    paths: Sequence[str | os.PathLike],
    *,
    cache_path: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    stage: str = "fingerprint",
) -> list[str]:
    """SHA-256 hex digests of many files, remembered on disk per (path, size, mtime) in ``cache_path`` (SQLite).

    A repeat in another process (a restarted server, the CLI) then only ``stat``s each file instead of
    reading it. A copied or touched file misses and is read again and, its bytes unchanged, gives the same
    digest, so content hashes stay right. The on-disk cache is an optimisation only: a missing, damaged or
    read-only one means files are read. ``progress`` gets ``stage`` events about every 1 %.
    """
    keys = [_digest_key(path, "sha256") for path in paths]
    # With an on-disk cache the digests are not also kept in this process (_DIGESTS): that memo costs ~450 bytes a
    # file, 45 MB of a 100,000-image extraction's peak (python -m bench --only scale) and 0.6 GB at ImageNet's size,
    # while the caller's repeats already come from the disk cache or, for a whole dataset, from ``remembered``.
    memo = _DIGESTS if cache_path is None else {key: _DIGESTS[key] for key in keys if key in _DIGESTS}
    missing = [i for i, key in enumerate(keys) if key not in memo]
    if missing and cache_path is not None:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(cache_path, timeout=10)) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS digests (path TEXT, size INTEGER, mtime_ns INTEGER, sha256 TEXT, "
                "PRIMARY KEY (path, size, mtime_ns))"
            )
            known = {(p, size, mtime): digest for p, size, mtime, digest in db.execute("SELECT * FROM digests")}
            for i in missing:
                if (digest := known.get(keys[i][1:])) is not None:
                    memo[keys[i]] = digest
            del known
            missing = [i for i in missing if keys[i] not in memo]
    total, known_count = len(keys), len(keys) - len(missing)
    meter, step = RateMeter(), max(1, total // 100)
    report(progress, stage, known_count, total, message=f"{known_count} file(s) known, {len(missing)} to read")
    for done, i in enumerate(missing, start=1):
        memo[keys[i]] = _hash_file(paths[i], "sha256", keys[i][2], None, stage)
        if done % step == 0 or done == len(missing):
            report(
                progress,
                stage,
                known_count + done,
                total,
                rate=meter.rate(done),
                message="reading new or changed files",
            )
    if missing and cache_path is not None:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(cache_path, timeout=10)) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)",
                [(*keys[i][1:], memo[keys[i]]) for i in missing],
            )
    return [memo[key] for key in keys]


def remembered(cache_path: str | os.PathLike, key: str, compute: Callable[[], str]) -> str:
    """``compute()``, kept in the SQLite file ``cache_path`` under ``key`` and returned from there next time.

    For results that follow from ``key`` alone (a dataset's fingerprint from its files' sizes and times). The
    cache is an optimisation only: when it cannot be read or written, ``compute()`` runs and its value is returned.
    """
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(cache_path, timeout=10)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS remembered (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM remembered WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return row[0]
    value = compute()
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(cache_path, timeout=10)) as db, db:
        db.execute("INSERT OR REPLACE INTO remembered VALUES (?, ?)", (key, value))
    return value


# Socket errors of a machine without a network (as opposed to a server that is busy or restarting).
_OFFLINE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH})
# HTTP statuses worth another try: the server is overloaded or restarting; any other 4xx will not change.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Restart(Exception):
    """The server does not resume (no 206 for our Range request): start the file again from byte 0."""


def _partial_path(target: Path) -> Path:
    """Where a download in progress lives: beside the target, under a name nothing reads as the finished file."""
    return target.with_name(f".{target.name}.part")


def _fetch_into(url: str, partial: Path, *, timeout_s: float, on_bytes: Callable[[int, int, float], None]) -> None:
    """Append ``url``'s remaining bytes to ``partial``, asking for them with a Range request when it has some.

    ``on_bytes(done, total, bytes_per_s)`` after every chunk. Raises ``_Restart`` when the server ignores the range.
    """
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix of this file (or already whole)
            raise _Restart() from exc
        raise
    with response:
        if offset and response.status != 206:
            raise _Restart()
        length = int(response.headers.get("Content-Length") or 0)
        total = offset + length if length else 0
        meter = RateMeter()
        with open(partial, "ab") as out:
            done = offset
            # read1 returns what one receive brings, so a server that stalls hits the socket timeout even when it
            # trickles; read(n) would wait for all n bytes.
            while chunk := response.read1(1 << 20):
                out.write(chunk)
                done += len(chunk)
                on_bytes(done, total, meter.rate(done - offset))
            out.flush()
            os.fsync(out.fileno())
        if total and done < total:
            raise ConnectionError(f"the connection closed after {done} of {total} bytes")


def download(
    url: str,
    destination: str | os.PathLike,
    *,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    what: str,
    manual_hint: str,
    progress: ProgressCallback | None = None,
    timeout_s: float = 15.0,
    retries: int = 4,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``destination``: progress, resume, bounded retries, checksum, atomic finish.

    The bytes go to a partial file beside the destination (``.<name>.part``); an interrupted download is resumed
    from it with an HTTP Range request, on the next attempt or the next call. Only a complete file whose checksum
    (``md5`` and/or ``sha256_prefix``, where known) matches is renamed onto ``destination``, so the destination
    never holds part of a file.

    Parameters
    ----------
    timeout_s : float
        Stall limit: seconds without a single byte from the server before the attempt fails.
    retries, backoff_s : int, float
        Connection errors, stalls and 5xx/429 answers are retried ``retries`` times, waiting ``backoff_s``,
        then twice as long each time (1, 2, 4, 8 s by default); a 404 or other 4xx is not.

    Raises
    ------
    MissingFileError
        Offline, a missing file, a corrupt download (checksum mismatch: nothing is kept) or retries exhausted
        (the partial file is kept for the next call): names the file and URL and adds ``manual_hint``.
    """
    target = Path(destination)
    partial = _partial_path(target)

    def on_bytes(done: int, total: int, rate: float) -> None:
        size = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        report(progress, "download", done, total, rate=rate, message=f"{what}: {size} at {rate / 1e6:.2f} MB/s")

    with disk_errors(target):
        partial.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            try:
                _fetch_into(url, partial, timeout_s=timeout_s, on_bytes=on_bytes)
                break
            except _Restart:
                partial.unlink(missing_ok=True)
                continue
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRY_STATUSES or attempt >= retries:
                    partial.unlink(missing_ok=True)  # wrong URL or refused: the bytes so far are of no use
                    raise MissingFileError(
                        f"Could not download {what} from {url}: "
                        f"the server answered {exc.code} {exc.reason}. {manual_hint}"
                    ) from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                # A host name that does not resolve, or no route to any network, means offline: waiting will not help.
                reason = getattr(exc, "reason", None)
                offline = isinstance(reason, socket.gaierror) or getattr(reason, "errno", None) in _OFFLINE_ERRNOS
                if attempt >= retries or offline:
                    reason = getattr(exc, "reason", exc) or type(exc).__name__
                    kept = partial.stat().st_size if partial.exists() else 0
                    resume = (
                        f" {kept / 1e6:.1f} MB are kept in {partial}; trying again resumes from there." if kept else ""
                    )
                    raise MissingFileError(
                        f"Could not download {what} from {url} ({reason}) after {attempt + 1} attempt(s).{resume} "
                        f"{manual_hint}"
                    ) from exc
            time.sleep(backoff_s * 2**attempt)
            attempt += 1
        for algorithm, expected in (("md5", md5), ("sha256", sha256_prefix)):
            if expected is not None and not (actual := file_digest(partial, algorithm)).startswith(expected):
                partial.unlink(missing_ok=True)
                raise MissingFileError(
                    f"{what} downloaded from {url} has {algorithm.upper()} {actual}, expected {expected}: the download "
                    f"is corrupt and was deleted. Try again, or {manual_hint}"
                )
        os.replace(partial, target)
    return target
