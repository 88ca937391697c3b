"""Files written atomically: a temp file in the same folder, fsync, rename. A full disk, a file-size limit,
a read-only folder or a crash leaves the previous file intact and loadable, and raises one line that says so."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from semivit.errors import SemivitError


def atomic_write(path: Path, write: Any, durable: bool = True) -> None:
    """Write through a temp file in the same folder, fsync, rename: a full disk, a read-only folder or a
    crash leaves the previous file intact and loadable, and raises one line that says so. ``durable=False``
    skips the fsync (a log rewritten every few steps: readers still never see half a file, and an fsync per
    write cost ~60 ms here, more than a training step)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise SemivitError(f"cannot write '{path}' ({e.strerror or e}): {kept}; free disk space or choose a "
                           f"writable --out, then continue with --resume") from None
    except (RuntimeError, SafetensorError) as e:
        # torch.save's zip writer reports a failed write as a RuntimeError whose text need not say so (on a
        # full filesystem: "[enforce fail at inline_container.cc:…] . unexpected pos …"), safetensors as its
        # own error; the callable only writes ``tmp``, so either is a failed write, and its first line is kept
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise SemivitError(f"cannot write '{path}' ({str(e).splitlines()[0]}): {kept}; free disk space or choose "
                           f"a writable --out, then continue with --resume") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, written with :func:`atomic_write`: a reader sees the old file or the new one."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2)))


def prepare_output(path: str | Path, folder: bool = False) -> Path:
    """Check (and create the folders above) an output path *before* the work that fills it, so a command never
    computes for minutes and then dies on a path it cannot write. ``folder``: the output is a folder (a hub
    export); else a file. One line names the problem and the fix."""
    p = Path(path)
    if folder:
        if p.exists() and not p.is_dir():
            raise SemivitError(f"the output '{p}' is a file, and this output is a folder: name a folder")
        target = p
    else:
        if p.is_dir():
            raise SemivitError(f"the output '{p}' is a folder: name a file inside it, e.g. '{p / 'out'}'")
        target = p.parent
    for ancestor in [target, *target.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise SemivitError(f"cannot write '{p}': '{ancestor}' is a file, not a folder; choose another path")
            break
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SemivitError(f"cannot create the folder '{target}' for '{p}' ({e.strerror or e}): choose another "
                           f"path") from None
    if not os.access(target, os.W_OK):
        raise SemivitError(f"cannot write into '{target}' (permission denied): choose another path for '{p}'")
    return p


def read_npz(path: str | Path, keys: list[str] | None = None) -> dict[str, Any]:
    """The arrays of an ``.npz`` file (those named in ``keys``, or all), read without unpickling: object arrays
    (pickled Python objects), a truncated or damaged file, and a file that is not an npz each end in one line
    that names the file and the fix."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in (keys if keys is not None else z.files) if key in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise SemivitError(f"'{path}' holds object arrays (pickled Python objects), which semivit never "
                               f"unpickles: save plain numeric arrays (uint8 images, integer labels)") from None
        raise SemivitError(f"cannot read '{path}' as .npz ({str(e).splitlines()[0][:120]}): re-create it") from None
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, KeyError) as e:
        raise SemivitError(f"cannot read '{path}' as .npz ({type(e).__name__}): it is truncated or damaged; "
                           f"re-create or download it again") from None


def load_tensors_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: plain tensors and containers, never code. torch's
    own warnings (an unusual pickle protocol) are silenced, and callers turn its errors into one line of their
    own: torch's advice to retry with ``weights_only=False`` would run the file's code, and semivit never
    passes it on."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
