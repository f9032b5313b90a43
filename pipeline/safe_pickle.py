"""Load a pickle that may only hold plain data: containers, numbers, strings and numpy arrays.

`pickle.load` runs whatever callable the file names (`os.system`, `eval`, ...), so a downloaded split
file (e.g. the SSB `*_osr_splits.pkl`) could run code. Every callable a pickle uses passes through
`find_class`; this one hands out only an allow-list, resolved from its own table rather than by
importing the module the file names. Containers and numbers mostly need no callable at all; the
table covers the rest, for protocols 0-5 and numpy 1.x (`numpy.core`) and 2.x (`numpy._core`) paths.
"""

import _compat_pickle
import builtins
import codecs
import pickle

import numpy as np

_BUILTINS = ("dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "str", "bytes",
             "bytearray", "bool", "slice", "range")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


def _latin1_encode(text, encoding="utf-8"):
    """Protocols 0-2 write bytes as `_codecs.encode(text, "latin1")`; admit only that codec, not
    (say) a decompressing one."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}: only latin1 "
                                f"(how old protocols write bytes) is allowed")
    return codecs.encode(text, encoding)


def _allowed() -> dict:
    """(module, name) -> the object to hand out; numpy's core under both its 1.x and 2.x paths."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:   # numpy 1.x
        from numpy.core import multiarray, numeric
    core = {("multiarray", "_reconstruct"): multiarray._reconstruct, ("multiarray", "scalar"): multiarray.scalar,
            ("numeric", "_frombuffer"): numeric._frombuffer}   # _frombuffer: ndarrays under protocol 5
    table = {("builtins", name): getattr(builtins, name) for name in _BUILTINS}
    table.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                  ("_codecs", "encode"): _latin1_encode})
    for package in ("numpy._core", "numpy.core"):
        table.update({(f"{package}.{sub}", name): value for (sub, name), value in core.items()})
    return table


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        # Python 2 names (`__builtin__.set`, `__builtin__.xrange`) as the default find_class maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name} from {self.path}: only plain "
                                    f"containers, numbers, strings and numpy arrays are allowed")
        return _ALLOWED[(module, name)]


def load(path):
    """The object pickled in `path`, refusing (UnsafePickleError, before it runs) any other global."""
    with open(path, "rb") as f:
        return _Unpickler(f, path).load()
