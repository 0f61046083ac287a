"""Read the tensors of any torch checkpoint without running code from it.

`torch.load(weights_only=True)` refuses files that also pickle training objects (a yacs config in the released VMamba
classifiers, mmengine's message hub with its numpy history buffers in every mmdet / mmseg checkpoint). `load_tensors`
reads such files with the same allowlist (torch's weights-only globals: tensors, storages, dtypes, OrderedDict, ...)
and turns every other global into an inert `Unreadable` placeholder instead of importing and calling it, so the
dicts of tensors come back intact and nothing else executes.
"""
import os
import pickle
import types

import torch
from torch._weights_only_unpickler import _get_allowed_globals

__all__ = ["Unreadable", "load_tensors"]


class Unreadable:
    """Stands for a pickled object of a class outside torch's weights-only allowlist; holds nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __call__(self, *args, **kwargs):
        return Unreadable()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return "Unreadable()"


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _get_allowed_globals().get(f"{module}.{name}")
        return allowed if allowed is not None else Unreadable


_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_AllowlistUnpickler, load=lambda file, **kwargs: _AllowlistUnpickler(
    file, **kwargs).load(), __name__="vision2d.unpickle")


def load_tensors(path: str | os.PathLike, map_location="cpu"):
    """`torch.load(path)` with torch's weights-only allowlist; objects of other classes become `Unreadable`."""
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_PICKLE_MODULE)
