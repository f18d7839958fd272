"""Files morphonet writes and reads back: written atomically, read back checked.

- `atomic_write`: write to a temporary file in the same directory, fsync, rename over the
  target. A reader sees the old file or the new one, never half of one, whatever kills the
  writer.
- `write_checked` / `read_checked`: the same, with a one-line header holding the kind of file,
  the payload's length and its SHA-256, so a truncated, damaged or foreign file raises
  `CorruptFileError` naming the file and what is wrong, instead of a decoder's error from
  deep inside loading.
- `save_torch` / `load_torch`: ``torch.save`` objects in a checked file (loaded with
  ``weights_only=True``); `write_json` / `read_json`: JSON written atomically, read with an
  error that names the file.
- `append_record` / `read_records`: an append-only log of JSON records (a long job's finished
  runs), one line each with its own checksum; a line a kill cut short is left out (with a
  warning), any other damage raises `CorruptFileError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import warnings
from typing import Any

import torch

__all__ = ["CorruptFileError", "append_record", "atomic_write", "load_torch", "read_checked",
           "read_json", "read_records", "save_torch", "write_checked", "write_json"]

_MAGIC = b"MORPHO1"


class CorruptFileError(ValueError):
    """A file morphonet wrote cannot be read back as what it should be; the message names the
    file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike, why: str):
        self.path, self.why = str(path), why
        super().__init__(f"{self.path}: {why}")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file should read as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_checked(path: str | os.PathLike, data: bytes, kind: str) -> None:
    """`atomic_write` of ``data`` behind a header line ``MORPHO1 <kind> <length> <sha256>``."""
    if not kind.isidentifier():
        raise ValueError(f"kind must be a simple name, got {kind!r}")
    head = b"%s %s %d %s\n" % (_MAGIC, kind.encode(), len(data),
                               hashlib.sha256(data).hexdigest().encode())
    atomic_write(path, head + data)


def read_checked(path: str | os.PathLike, kind: str) -> bytes:
    """The payload of a file written by `write_checked` as ``kind``; `CorruptFileError` when
    it is missing its header, of another kind, truncated or damaged."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CorruptFileError(path, f"missing (expected a {kind} file)") from None
    head, sep, data = raw.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or parts[0] != _MAGIC:
        raise CorruptFileError(path, f"not a morpho {kind} file (no valid header)")
    if parts[1].decode(errors="replace") != kind:
        raise CorruptFileError(path, f"a {parts[1].decode(errors='replace')} file, expected "
                                     f"a {kind} file")
    try:
        n = int(parts[2])
    except ValueError:
        raise CorruptFileError(path, "damaged header (length)") from None
    if len(data) != n:
        raise CorruptFileError(path, f"truncated or padded: {len(data)} bytes of payload, the "
                                     f"header says {n}")
    if hashlib.sha256(data).hexdigest().encode() != parts[3]:
        raise CorruptFileError(path, "damaged: the SHA-256 of the payload does not match the "
                                     "header")
    return data


def save_torch(path: str | os.PathLike, obj: Any, kind: str) -> int:
    """``torch.save(obj)`` into a checked file (`write_checked`); returns the bytes written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_checked(path, data, kind)
    return len(data)


def load_torch(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> Any:
    """Inverse of `save_torch` (``weights_only=True``: tensors and plain Python values),
    tensors mapped to ``map_location`` (default the CPU: a file written on a GPU loads
    anywhere; ``load_state_dict`` then copies onto the model's device)."""
    data = read_checked(path, kind)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as e:
        # checksum fine but not a torch payload: written by something else
        raise CorruptFileError(path, f"payload is not a readable torch object ({e})") from e


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """JSON, written atomically."""
    atomic_write(path, json.dumps(obj, indent=indent).encode())


def read_json(path: str | os.PathLike) -> Any:
    """JSON read back; `CorruptFileError` naming the file when it is missing, truncated or not
    JSON."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise CorruptFileError(path, "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not valid JSON (truncated or damaged?): {e}") from e


def _line_sum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_record(path: str | os.PathLike, record: Any) -> None:
    """Append ``record`` as one JSON line followed by its checksum, flushed to disk. A last
    line a kill cut short (no newline; `read_records` leaves it out) is cut off first: appended
    to, it would become a damaged line in the middle of the log, and every later read of the
    resumed job's log would raise."""
    text = json.dumps(record, separators=(",", ":"))
    with open(path, "ab") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            with open(path, "rb") as r:
                r.seek(end - 1)
                if r.read(1) != b"\n":
                    r.seek(0)
                    f.truncate(r.read().rfind(b"\n") + 1)
        f.write(f"{text}\t{_line_sum(text)}\n".encode())
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[Any]:
    """The records of an `append_record` log. A last line without its newline (cut short by a
    kill) is left out with a warning; a damaged line anywhere raises `CorruptFileError` naming
    the file and the line."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise CorruptFileError(path, "missing") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line:
            continue
        body, tab, check = line.rpartition("\t")
        if tab and _line_sum(body) == check:
            out.append(json.loads(body))
        elif i == len(lines):  # no newline after it: the write was cut short
            warnings.warn(f"{path}: line {i} was cut short (an interrupted write); left out",
                          stacklevel=2)
        else:
            raise CorruptFileError(path, f"line {i} is damaged (its checksum does not match)")
    return out
