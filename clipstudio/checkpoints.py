"""The one way the package reads a pickled checkpoint: :func:`load_checkpoint`.

A checkpoint is loaded with ``torch.load(weights_only=True)``. A file that holds more than tensors and plain
containers (a Lightning ``.ckpt``: callbacks, hyper-parameter objects beside the ``state_dict``) is read with a
restricted unpickler instead: it rebuilds tensors, storages and plain containers and turns every other class
into an inert :class:`Stub` that records its arguments; nothing from the file is imported or called. A full
unpickle (which runs whatever code the file names) happens only with ``trusted=True``, which callers take from
the command line of the current run, never from a settings file.

Every ``torch.load`` in the package goes through here (``tests/test_checkpoints.py`` greps for others).
"""
from __future__ import annotations

import collections
import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from .errors import ClipstudioError

# Globals the restricted unpickler hands out as themselves: tensor rebuilding and plain values. Anything else
# becomes a Stub. (torch's own weights-only list also admits tensor subclasses and rebuild functions that
# call an argument; those are left out on purpose.)
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): lambda text, encoding="utf-8": str(text).encode(str(encoding)),
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
_LAYOUTS = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.layout)}


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch's ``_rebuild_tensor_v2`` without the pickled backward hooks (callables from the file)."""
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    """A Parameter without the pickled hooks or attribute state."""
    return torch.nn.Parameter(data, requires_grad)


_SAFE_GLOBALS.update({
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
})


class Stub:
    """An object of a class the restricted unpickler does not trust: it keeps what the file said about it
    (module, name, constructor arguments, state, items) and does nothing else."""

    __slots__ = ("args", "state", "items", "__weakref__")
    stub_module = "?"
    stub_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args + ((kwargs,) if kwargs else ()), None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (AttributeDict) pickle their items
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses pickle theirs with APPENDS
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<stub {self.stub_module}.{self.stub_name}>"


def _stub_class(module: str, name: str) -> type:
    return type(str(name), (Stub,), {"__slots__": (), "stub_module": str(module), "stub_name": str(name),
                                     "__module__": __name__})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that executes nothing from the file: safe globals are itself, others become stubs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and (name in _DTYPES or name in _LAYOUTS):
            return getattr(torch, name)
        return _stub_class(module, name)


def _restricted_load(file, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) needs: ``Unpickler`` (which torch subclasses to map storage types) and
# ``load`` (for the legacy format's header).
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="clipstudio.restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike, *, trusted: bool = False, map_location: Any = "cpu") -> Any:
    """The object pickled in the checkpoint at ``path``; a missing or corrupt file is a one-line error.

    Weights-only first; a file that holds more (a Lightning ``.ckpt``) goes through the restricted unpickler,
    in which classes become :class:`Stub` objects and nothing runs. ``trusted=True`` makes that second try a
    full unpickle (which runs code from the file and needs its classes importable): pass it only from the
    command line of the current run.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipstudioError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise ClipstudioError(f"checkpoint {path} is corrupt or not a checkpoint ({_first_line(err)})") from None
    except Exception as err:  # truncated zip, foreign bytes, EOF: torch raises several types
        raise ClipstudioError(f"checkpoint {path} is corrupt or not a checkpoint ({_first_line(err)})") from None
    if trusted:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            raise ClipstudioError(f"checkpoint {path} could not be unpickled even when trusted "
                                  f"({_first_line(err)})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except Exception as err:
        raise ClipstudioError(f"checkpoint {path} is corrupt or not a checkpoint ({_first_line(err)})") from None


def checkpoint_state_dict(checkpoint: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``state_dict`` (a Lightning checkpoint's, or the file's own mapping)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if isinstance(state, Stub):  # a dict subclass the file named: its items were kept
        state = state.items
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipstudioError(f"{path} has no state_dict of tensors")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def require_keys(checkpoint: Any, keys: tuple[str, ...], path: str | os.PathLike = "checkpoint") -> dict:
    """``checkpoint`` if it is a mapping holding every one of ``keys``; else a one-line error naming what lacks."""
    if not isinstance(checkpoint, dict):
        raise ClipstudioError(f"{path} is not a checkpoint of this kind (a {type(checkpoint).__name__})")
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise ClipstudioError(f"{path} lacks {', '.join(missing)}; it is not a checkpoint of this kind")
    return checkpoint
