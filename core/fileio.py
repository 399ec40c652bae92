"""Safe file operations: atomic writes, contained paths, filtered archive extraction, downloads, file digests.

Every file Flower Probe writes goes through ``atomic_write``: the data lands in a temporary file in
the same folder and is renamed over the target only when complete, so a crash, a kill -9 or a full
disk leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from .errors import MissingFileError, UnsafePathError, WorkspaceWriteError
from .progress import ProgressCallback, RateMeter, report

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _workspace_write_error(path: Path, exc: OSError) -> WorkspaceWriteError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return WorkspaceWriteError(
        f"Could not write {path}: {reason}. Free some disk space or make the workspace writable "
        f"(set FLOWER_PROBE_WORKSPACE to another folder); files saved earlier are unchanged."
    )


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    Disk-full and permission errors become ``WorkspaceWriteError`` with a message saying what to do.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS:
            raise _workspace_write_error(target, exc) from exc
        raise
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _DISK_ERRNOS:
            raise _workspace_write_error(target, exc) from exc
        raise
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


def file_digest(
    path: str | os.PathLike, algorithm: str = "sha256", *, progress: ProgressCallback | None = None, stage: str = "hash",
) -> str:
    """Hex digest of the file's bytes, remembered per (path, size, modification time) in this process.

    So a dataset of thousands of files is read once, and later calls only ``stat`` it; a copied or
    touched file is read again and, its bytes unchanged, gives the same digest. Reports ``stage``
    progress every 8 MiB (weights files run to hundreds of MB).
    """
    stat = os.stat(path)
    key = (algorithm, os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        done = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                report(progress, stage, done, stat.st_size, message=f"Checking {Path(path).name}")
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def download(
    url: str,
    destination: str | os.PathLike,
    *,
    md5: str | None = None,
    what: str,
    manual_hint: str,
    progress: ProgressCallback | None = None,
    timeout_s: float = 15.0,
) -> Path:
    """Download ``url`` to ``destination`` with progress, checksum check and an atomic finish.

    Offline (or on any network error) raise ``MissingFileError`` whose message names the file and
    ``manual_hint`` (where to put it by hand) instead of hanging or leaving a partial file.
    """
    target = Path(destination)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, atomic_write(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            meter = RateMeter()
            with open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    report(progress, "download", done, total, message=f"{what}: {done / 1e6:.1f} MB", rate=meter.rate(done))
            if md5 is not None and (actual := file_digest(tmp, "md5")) != md5:
                raise MissingFileError(
                    f"{what} downloaded from {url} has MD5 {actual}, expected {md5}: the download is corrupt. "
                    f"Try again, or {manual_hint}"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MissingFileError(f"Could not download {what} from {url} ({reason}). {manual_hint}") from exc
    return target
