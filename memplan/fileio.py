"""Files written whole or not at all: write to a temporary name beside the target, then rename.

Commands check every output path before their work (:func:`check_writable`), so a path that
cannot be written fails in a second, not after a long run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from memplan.errors import OutputError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when a file can be written there (its folder exists and is writable, or
    can be created); OutputError naming the reason otherwise. Leaves nothing behind: a probe file
    in the nearest existing folder is created and removed."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder")
    folder = target.parent
    while not folder.exists():
        if folder.is_symlink():
            raise OutputError(f"cannot write {target}: {folder} is a broken link")
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {folder} is a file, not a folder")
    try:  # a real probe: permission bits do not tell root, read-only mounts or /sys apart
        handle, probe = tempfile.mkstemp(prefix=".memplan-probe.", dir=folder)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error} in {folder}") from error
    os.close(handle)
    os.unlink(probe)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically, creating parent folders; return the path.

    A reader sees either the old file or the complete new one, never a half-written file, even
    if the process is killed mid-write: the data goes to a temporary file in the same folder
    (so the final rename stays on one filesystem) and ``os.replace`` swaps it in.
    """

    def write(temp_name: str) -> None:
        with open(temp_name, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())

    return atomic_write(path, write)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_name)`` to fill a temporary file beside ``path``, give it the mode
    a new file gets under the umask (0644 usually), and rename it to ``path``; return the path.

    Parent folders are created. A path that cannot be written raises OutputError (one line); a
    failure leaves any old file whole and no temporary behind.
    """
    target = check_writable(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix,
                                             dir=target.parent)
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error}") from error
    try:
        write(temp_name)
        os.chmod(temp_name, 0o666 & ~_current_umask())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def _current_umask() -> int:
    """The process umask (mkstemp creates files 0600; a plan, profile or plot should get the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
