"""Reading pickles that hold only data: a restricted unpickler, for the formats that are pickles (CIFAR's python
batches). ``pickle.load`` runs whatever a file names (``os.system`` included); this one builds dicts, lists,
tuples, str, bytes, numbers and numpy arrays, and refuses every other global the file asks for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from semivit.errors import SemivitError

#: the globals a pickled numpy array needs (numpy 1 and 2 module names), and _codecs.encode, with which
#: protocol 2 stores bytes written by Python 3 (it turns a str into bytes, nothing else); nothing more
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to run {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids")


def load_data_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """The data in a pickle file, without running code from it; a file that names any other global is refused
    with one line (``encoding='latin1'``: Python 2 pickles, as CIFAR's).

    Examples:
        >>> import tempfile, numpy as np
        >>> path = Path(tempfile.mkdtemp()) / "batch"
        >>> path.write_bytes(pickle.dumps({"labels": [1, 2], "data": np.zeros((2, 3), np.uint8)}))
        >>> load_data_pickle(path)["labels"]
        [1, 2]
    """
    data = Path(path).read_bytes()
    try:
        return _DataOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as e:
        raise SemivitError(f"refused to read '{path}': {e}, and a data file needs no code (it may have been "
                           f"crafted); use the original files") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise SemivitError(f"cannot read '{path}' as a pickled data batch ({type(e).__name__}): it is truncated "
                           f"or not the expected format; download the data set again") from None
