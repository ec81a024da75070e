"""Files written whole or not at all: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically, creating parent folders; return the path.

    A reader sees either the old file or the complete new one, never a half-written file, even
    if the process is killed mid-write: the data goes to a temporary file in the same folder
    (so the final rename stays on one filesystem) and ``os.replace`` swaps it in.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def _current_umask() -> int:
    """The process umask (mkstemp creates files 0600; a plan or profile should get the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
