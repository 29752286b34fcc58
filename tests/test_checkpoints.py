"""Checkpoints: one loader (weights-only, or a restricted unpickler that runs nothing), and no other
torch.load / pickle.load in the package."""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from clipstudio.checkpoints import Stub, checkpoint_state_dict, load_checkpoint
from clipstudio.errors import ClipstudioError

PACKAGE = Path(__file__).resolve().parent.parent / "clipstudio"


class RunsCode:
    """Unpickling this object would create ``marker`` (through os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPython:
    """Unpickling this would call builtins.exec with Python that writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _fake_module(name: str, **classes) -> types.ModuleType:
    """A module that exists only while the test pickles (so the loading side cannot import it)."""
    module = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__, cls.__name__ = name, cls_name, cls_name
        setattr(module, cls_name, cls)
    return module


def lightning_like_checkpoint(path: Path, extra: dict | None = None, zip_format: bool = True
                              ) -> dict[str, torch.Tensor]:
    """Save a checkpoint shaped like a Lightning 1.x .ckpt: classes from modules that do not exist at load
    time, a hyper_parameters AttributeDict (a dict subclass) and a Namespace; returns its state_dict."""
    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_score = "val/rec_loss", torch.tensor(0.5)

    class AttributeDict(dict):
        pass

    names = ("pytorch_lightning.callbacks.model_checkpoint", "pytorch_lightning.utilities.parsing")
    callbacks = _fake_module(names[0], ModelCheckpoint=ModelCheckpoint)
    parsing = _fake_module(names[1], AttributeDict=AttributeDict)
    state = collections.OrderedDict(
        [("encoder.conv_in.weight", torch.randn(4, 3, 3, 3)), ("quantize.embedding.weight", torch.randn(8, 4)),
         ("loss.discriminator.main.0.weight", torch.randn(2, 3, 4, 4))])
    hparams = AttributeDict(ddconfig={"ch": 4}, n_embed=8, lr=4.5e-6)
    ckpt = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
            "checkpoint_callback_obj": ModelCheckpoint(), "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": [], "hyper_parameters": hparams, "hparams_namespace": argparse.Namespace(a=1),
            **(extra or {})}
    modules = {"pytorch_lightning": types.ModuleType("pytorch_lightning"),
               "pytorch_lightning.callbacks": types.ModuleType("pytorch_lightning.callbacks"),
               "pytorch_lightning.utilities": types.ModuleType("pytorch_lightning.utilities"),
               names[0]: callbacks, names[1]: parsing}
    sys.modules.update(modules)
    try:
        torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    finally:
        for name in modules:
            del sys.modules[name]
    return state


def test_weights_only_checkpoint_loads_as_itself(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2), "step": 3}, path)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.ones(2))


@pytest.mark.parametrize("zip_format", [True, False])  # the 2020 taming releases predate or follow the zip format
def test_lightning_checkpoint_loads_without_its_classes(tmp_path, zip_format):
    path = tmp_path / "model.ckpt"
    state = lightning_like_checkpoint(path, zip_format=zip_format)
    assert "pytorch_lightning" not in sys.modules
    loaded = load_checkpoint(path)
    assert "pytorch_lightning" not in sys.modules  # nothing was imported
    assert isinstance(loaded["checkpoint_callback_obj"], Stub)
    assert loaded["checkpoint_callback_obj"].stub_name == "ModelCheckpoint"
    tensors = checkpoint_state_dict(loaded, path)
    assert list(tensors) == list(state)
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert isinstance(loaded["hyper_parameters"], Stub) and loaded["hyper_parameters"].state is None


@pytest.mark.parametrize("payload", [RunsCode, RunsPython])
@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_would_run_code_loads_without_running_it(tmp_path, payload, zip_format):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    state = lightning_like_checkpoint(path, extra={"hyper_parameters": payload(marker), "x": [payload(marker)]},
                                      zip_format=zip_format)
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert isinstance(loaded["hyper_parameters"], Stub)
    assert set(checkpoint_state_dict(loaded, path)) == set(state)
    assert not marker.exists()


class HookedTensor:
    """Pickles as a tensor whose rebuild names backward hooks (torch never writes them; a hostile file can)."""

    def __init__(self, marker: Path):
        self.tensor, self.marker = torch.ones(3), marker

    def __reduce__(self):
        hooks = collections.OrderedDict(hook=RunsCode(self.marker))
        return torch._utils._rebuild_tensor_v2, (self.tensor.storage(), 0, (3,), (1,), False, hooks)


def test_pickled_backward_hooks_are_dropped(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "hooks.pt"
    with pytest.warns(UserWarning):  # TypedStorage is deprecated, and only this test needs it
        torch.save({"state_dict": {"w": HookedTensor(marker)}, "n": Stub}, path)
    loaded = load_checkpoint(path)
    weight = loaded["state_dict"]["w"]
    assert torch.equal(weight, torch.ones(3)) and not weight._backward_hooks
    assert not marker.exists()


def test_trusted_load_is_a_full_unpickle(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"a": RunsCode(marker)}, path)
    load_checkpoint(path)
    assert not marker.exists()
    load_checkpoint(path, trusted=True)
    assert marker.exists()  # the flag from the command line is what allows it


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_corrupt_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ClipstudioError, match="corrupt or not a checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ClipstudioError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_no_other_loader_in_the_package():
    """Every torch.load / pickle.load in the package is the one in checkpoints.py."""
    pattern = re.compile(r"\b(torch\.load|pickle\.loads?|cloudpickle|dill\.load|Unpickler\(|torch\.jit\.load)\b|"
                         r"allow_pickle\s*=\s*True")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "checkpoints.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            code = re.sub(r"``[^`]*``|\"[^\"]*\"|'[^']*'", "", code)  # mentions in docstrings and messages
            if pattern.search(code):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "load checkpoints through clipstudio.checkpoints.load_checkpoint:\n" + "\n".join(found)
