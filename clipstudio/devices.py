"""Devices: ``auto`` picks CUDA, then Apple's MPS, then the CPU; RNG states saved device-neutral."""
from __future__ import annotations

import torch

from .errors import ClipstudioError

AUTO = "auto"


def resolve_device(name: str = AUTO) -> torch.device:
    """The torch device for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``); one line of error
    when the machine has no such device."""
    if name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ClipstudioError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipstudioError(f"device '{name}' asked for, but this machine has no CUDA GPU; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ClipstudioError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ClipstudioError(f"device '{name}' asked for, but MPS is not available here; use --device cpu or auto")
    return device
