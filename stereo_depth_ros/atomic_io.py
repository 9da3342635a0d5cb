"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint, label or manifest.

Each helper writes to a temporary file in the destination's directory (same filesystem, so the final
`os.replace` is atomic), flushes and fsyncs it, then renames it over the destination.

Files come out with the permissions of any new file (0666 less the umask: 0644 under the usual 022), so that a
model deployed by another user or in a container can be read. `tempfile.mkstemp` would make them 0600, so the
temporary file is created here with a random name and the exclusive-create flag, as mkstemp does.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed.

    For writers that insist on a file name (cv2.imwrite, torch.onnx.export): they write the yielded path.
    The temporary name keeps the destination's suffix so that writers choosing a format by extension work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> Path:
    """A new empty file beside `path`, mode 0666 less the umask (the kernel applies it, as for any new file)."""
    for _ in range(100):
        candidate = path.with_name(f".{path.stem}.{secrets.token_hex(6)}{path.suffix}.partial{path.suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(handle)` on a temporary binary file, then move it over `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk; not every filesystem allows this.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make renames into `directory` durable (for writers that rename whole folders into place)."""
    _fsync_dir(Path(directory))
