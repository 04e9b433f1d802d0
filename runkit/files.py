"""Files written and read by every command: atomic writes (temp file, then rename), SHA-256 digests, CSV
tables, torch files read with ``weights_only=True`` and state dicts unwrapped from their containers."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["sha256_file", "atomic_write_bytes", "atomic_write_text", "atomic_save_torch", "load_torch_file",
           "csv_text", "write_csv", "read_csv", "unwrap_state_dict", "replace_block"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give: mkstemp's 0600 ignores the user's umask


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints of several GB included)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    An interrupted write (kill -9, an exception) never leaves a partial file under the final name. ``durable``
    also fsyncs the data before the rename, so the file survives a power cut; writers whose manifest records
    each file's SHA-256 and re-verifies it on resume (the builder) may skip that cost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            # for the one-line report (`runkit.errors.storage_message`): which file, and how much it needed
            err.filename, err.needed_bytes = str(path), len(data)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path`` (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file, then rename)."""
    import torch  # local: keeps the data layer importable without torch for the corruption workers

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint of this toolkit"):
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure to read the file (truncated,
    not a torch file, pickled objects) becomes one ValueError naming the file and ``what`` was expected,
    never torch's advice to retry with ``weights_only=False`` (an unsafe load)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same safe one-line answer
        raise ValueError(f"{path} is not a {what} ({type(err).__name__}: truncated, not a torch file, or it holds "
                         "pickled objects, which are never loaded)") from None


def _csv_cell(value: Any, float_format: str | None, nan: str = "") -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return nan
    if float_format and isinstance(value, float):
        return format(value, float_format)
    return value


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], float_format: str | None = None,
             nan: str = "") -> str:
    """CSV text with a header of ``columns`` (missing values as empty cells, NaN as ``nan``, by default empty
    too; floats formatted with ``float_format`` when given, e.g. ``".6g"``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k), float_format, nan) for k in columns})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
              float_format: str | None = None, nan: str = "") -> Path:
    """Atomically write ``rows`` as CSV (see `csv_text`)."""
    return atomic_write_text(path, csv_text(rows, columns, float_format, nan))


def read_csv(path: str | os.PathLike, ints: Sequence[str] = (), floats: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a CSV file as dicts; the ``ints`` and ``floats`` columns converted (empty cells -> None)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k in ints:
            if k in row:
                row[k] = int(row[k]) if row[k] not in ("", None) else None
        for k in floats:
            if k in row:
                row[k] = float(row[k]) if row[k] not in ("", None) else None
    return rows


def unwrap_state_dict(obj: Any, source: str | os.PathLike, wrappers: Sequence[str] = ("state_dict", "model", "ema"),
                      error: type[Exception] = ValueError, expected: str = "a state dict (name -> tensor)") -> dict:
    """The bare state dict inside a loaded checkpoint: unwraps the first of ``wrappers`` that holds a mapping
    (``{"state_dict": ...}`` and the like) and drops the ``module.`` prefix DataParallel/DDP add to every key.
    Raises ``error`` naming ``source`` and ``expected`` when what is left is not a dict of tensors."""
    import torch

    if isinstance(obj, Mapping):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise error(f"{str(source)!r} does not hold {expected} (found {type(obj).__name__})")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def replace_block(text: str, block: str, start: str, end: str, where: str = "") -> str:
    """``text`` with the part between the marker lines ``start`` and ``end`` replaced by ``block``: how the
    generated parts of the README and docs are kept in step with the commands that write them."""
    if start not in text or end not in text:
        raise ValueError(f"{where or 'the text'} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"
