"""Files we write get the mode of any new file (0666 less the umask: 0644 under the usual 022), never 0600."""
from __future__ import annotations

import os
import stat
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def assert_new_file_modes(*paths: Path) -> None:
    """Every regular file among `paths` (folders: every file under them) has mode 0666 & ~umask."""
    expected = 0o666 & ~current_umask()
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    assert files, f"no files under {paths}"
    wrong = {str(f): oct(stat.S_IMODE(f.stat().st_mode)) for f in files if stat.S_IMODE(f.stat().st_mode) != expected}
    assert not wrong, f"expected mode {oct(expected)} (0666 less the umask), got {wrong}"
