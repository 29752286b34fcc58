"""Devices: ``auto`` picks CUDA, then Apple's MPS, then the CPU; mixed precision by name; RNG states saved
device-neutral."""
from __future__ import annotations

import functools
import warnings

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


# --- precision -------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: "str | torch.dtype") -> torch.dtype:
    """The torch dtype for ``float32``, ``bfloat16`` or ``float16`` (a torch.dtype passes through)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ClipstudioError(f"unknown dtype '{name}'; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast(device: torch.device, dtype: str = "float32"):
    """A context that runs the forward passes inside it in ``dtype`` (mixed precision), or a no-op for float32
    and for devices whose autocast does not support that dtype (then the run stays float32). On a CPU that
    would only emulate ``dtype`` it says so once: the run then goes slower than in float32, not faster."""
    import contextlib

    wanted = resolve_dtype(dtype)
    if wanted == torch.float32 or not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    if device.type == "cpu" and not native_precision(wanted):
        _warn_emulated(str(wanted).replace("torch.", ""))
    return torch.autocast(device.type, dtype=wanted)


# torch's private probes of the CPU's instruction sets (False where a torch release drops one).
_NATIVE_CPU_PROBES = {torch.bfloat16: ("_is_amx_tile_supported", "_is_avx512_bf16_supported"),
                      torch.float16: ("_is_amx_fp16_supported",)}


def native_precision(dtype: "str | torch.dtype") -> bool:
    """Whether this CPU computes ``dtype`` natively: bfloat16 with AVX512-BF16 or AMX tiles, float16 with AMX-FP16
    (float32 always). Elsewhere oneDNN emulates it, and autocast in it runs slower than float32."""
    wanted = resolve_dtype(dtype)
    if wanted == torch.float32:
        return True
    return any(getattr(torch.cpu, name, lambda: False)() for name in _NATIVE_CPU_PROBES.get(wanted, ()))


@functools.cache
def _warn_emulated(dtype: str) -> None:
    warnings.warn(f"this CPU has no native {dtype} (AVX512-BF16 or AMX): autocast in {dtype} is emulated and "
                  f"slower than float32 here")


# --- RNG states, saved device-neutral ---------------------------------------------------------------------

def rng_state() -> dict:
    """The global RNG states as CPU ByteTensors: ``cpu`` always, ``cuda`` (one per GPU) where CUDA is in use,
    ``mps`` where MPS is; a checkpoint holding them loads on any machine with ``map_location="cpu"``."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state().cpu()
    return state


def set_rng_state(state) -> None:
    """Restore :func:`rng_state` (or a bare CPU state tensor, as older checkpoints hold) on this machine: each
    state is moved to the CPU first (where ``torch.set_rng_state`` wants it); GPU states are restored where
    this machine has as many GPUs, and otherwise left alone (the run goes on with the CPU state)."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    if not isinstance(state, dict) or not isinstance(state.get("cpu"), torch.Tensor):
        raise ClipstudioError("the checkpoint's RNG state is not a CPU RNG state; delete it to start over")
    try:
        torch.set_rng_state(state["cpu"].detach().to("cpu", torch.uint8))
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.detach().to("cpu", torch.uint8) for s in cuda])
        mps = state.get("mps")
        if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            torch.mps.set_rng_state(mps.detach().to("cpu", torch.uint8))
    except (RuntimeError, TypeError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ClipstudioError(f"the checkpoint's RNG state is unusable ({reason}); delete it to start over") from None
