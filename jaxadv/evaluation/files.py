"""JSON files that are never half written, and read back with errors that name the file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A file that cannot be used: damaged, not a jaxadv file, or written by another run.

    The message names the file and what is wrong with it; the file is left as it was.
    """


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` so that ``path`` always holds a complete file.

    The JSON goes to a temporary file in the same directory, which is flushed and
    ``fsync``-ed, then renamed over ``path`` (atomic on POSIX and Windows) and the
    directory is ``fsync``-ed. A crash at any point leaves either the previous
    file or the new one, never a mix; the temporary file is removed when the
    write fails with an exception (a killed process may leave one behind, named
    ``.<name>.*.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable; not every platform can open a directory.
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


def read_json(path: str | os.PathLike[str], what: str = "file") -> dict[str, Any]:
    """The JSON object stored at ``path``.

    Raises:
      CheckpointError: the file cannot be read, is not UTF-8 JSON (truncated or
        garbled) or does not hold a JSON object; the message names ``what``, the
        file and the problem.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} {path} is not a text file (byte {e.start} is not UTF-8)") from e
    except json.JSONDecodeError as e:
        # A cut file fails at its end, or inside its last (cut) token such as "tru" or "0.12e":
        # what follows the error is then one line of at most a token.
        tail = text[e.pos :].rstrip()
        truncated = not text.strip() or ("\n" not in tail and len(tail) <= 32)
        hint = "it looks truncated" if truncated else "it looks damaged"
        raise CheckpointError(
            f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; {hint})"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} does not hold a JSON object (found {type(data).__name__})")
    return data
