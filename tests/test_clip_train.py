"""Contrastive training on rendered batches: loss goes down, resume is exact, checkpoints load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipstudio.errors import ClipstudioError
from clipstudio.train import clip_train as ct

TINY = "test-shapes-tiny"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """Register a tiny config the way the shipped ones are registered (a config folder)."""
    d = tmp_path_factory.mktemp("cfg")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(d))
    return TINY


def _fixed_loss(model, batch) -> float:
    imgs, caps = batch
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        f_i, f_t, scale = model(ct.image_normalizer(model)(imgs), tok(caps))[:3]
        return float(open_clip.ClipLoss()(f_i, f_t, scale))


def test_make_batch_is_seeded_and_has_hard_negative_twins():
    a_img, a_cap = ct.make_batch((3, 5), 16, 32)
    b_img, b_cap = ct.make_batch((3, 5), 16, 32)
    c_img, c_cap = ct.make_batch((3, 6), 16, 32)
    assert torch.equal(a_img, b_img) and a_cap == b_cap
    assert not torch.equal(a_img, c_img)
    assert tuple(a_img.shape) == (16, 3, 32, 32) and 0 <= float(a_img.min()) and float(a_img.max()) <= 1
    rng = np.random.default_rng(0)
    from clipstudio.worlds.shapes.captions import spec_from_scene
    from clipstudio.worlds.shapes.render import sample_scene
    for _ in range(100):
        s = sample_scene(rng)
        t = ct.twin_scene(rng, s)
        assert t.form in ("left_of", "above") if s.form in ("left_of", "above") else t.form == s.form
        assert spec_from_scene(t) != spec_from_scene(s)


def test_training_lowers_the_loss_and_writes_loadable_fp16_checkpoint(tiny, tmp_path):
    out = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    held_out = ct.make_batch((999, 0), 64, 16)
    model0, _ = ct.create_model(tiny)
    summary = ct.train(tiny, steps=40, batch=32, lr=3e-3, seed=0, out=str(out), save_every=20,
                       progress=False, threads=1)
    before = _fixed_loss(ct.create_model(tiny)[0], held_out)  # same seed -> same init as the run
    model, _ = ct.create_model(tiny, pretrained=str(out))
    after = _fixed_loss(model, held_out)
    assert after < before - 0.3, (before, after)
    assert summary["steps"] == 40 and len(summary["history"]) == 40
    sd = torch.load(out, weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic writes leave nothing behind
    assert set(sd) == set(model0.state_dict())


def test_resume_continues_exactly(tiny, tmp_path):
    kw = dict(steps=6, batch=8, lr=1e-3, seed=1, save_every=2, progress=False, threads=1)
    full = ct.train(tiny, out=str(tmp_path / "a.pt"), **kw)
    ct.train(tiny, out=str(tmp_path / "b.pt"), stop_after=3, **kw)
    resumed = ct.train(tiny, out=str(tmp_path / "b.pt"), resume=True, **kw)
    assert resumed["history"] == full["history"]
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_state_and_bad_args_raise(tiny, tmp_path):
    with pytest.raises(ClipstudioError):
        ct.train(tiny, steps=2, batch=4, lr=1e-3, seed=0, out=str(tmp_path / "x.pt"), resume=True, progress=False)
    with pytest.raises(ClipstudioError):
        ct.train(tiny, steps=0, batch=4, lr=1e-3, seed=0, out=str(tmp_path / "x.pt"), progress=False)
    with pytest.raises(ClipstudioError):
        ct.create_model("no-such-model")
    with pytest.raises(ClipstudioError):
        ct.load_embedded("shapes-guide", str(tmp_path / "missing.pt"))


def test_cli_main_trains_and_reports(tiny, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = ct.main(["--model", tiny, "--steps", "2", "--batch", "8", "--lr", "1e-3", "--seed", "0",
                  "--out", str(out), "--threads", "1"])
    assert rc == 0 and out.exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["model"] == tiny
    assert ct.main(["--model", tiny, "--steps", "2", "--out", str(out), "--resume",
                    "--state", str(tmp_path / "nope")]) == 2


def test_lr_schedule_warms_up_then_decays():
    lrs = [ct.lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.slow
def test_retraining_the_guide_briefly_learns_colours(tmp_path):
    """A short from-scratch run of the shipped guide recipe already reads colours (minutes on CPU)."""
    from clipstudio.worlds.shapes.zeroshot import evaluate_clip

    out = tmp_path / "shapes-guide.pt"
    ct.train("shapes-guide", steps=300, batch=128, lr=1e-3, seed=5, out=str(out), save_every=100,
             progress=False, threads=2)
    acc = evaluate_clip("shapes-guide", n=40, seed=99, checkpoint=str(out))
    assert acc["background"] >= 0.9 and acc["colour"] >= 0.85, acc
