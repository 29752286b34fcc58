"""Contrastive training on rendered batches: loss goes down, resume is exact, checkpoints load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipstudio.cli import main as cli_main
from clipstudio.errors import ClipstudioError
from clipstudio.guide.clip import ClipGuide, create_clip_model, load_clip
from clipstudio.worlds.shapes import train_clip as ct

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
    guide = ClipGuide.from_open_clip(TINY, model, open_clip.get_tokenizer(TINY))
    with torch.no_grad():
        f_i, f_t, scale = model(guide.normalize(imgs), guide.tokenizer(caps))[:3]
        return float(open_clip.ClipLoss()(f_i, f_t, scale))


def _config(tiny, out, **changes) -> ct.ClipTrainConfig:
    return ct.ClipTrainConfig(**{"model": tiny, "out": str(out), **changes})


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


def test_training_lowers_the_loss_and_writes_loadable_fp16_checkpoint(tiny, tmp_path, one_thread):
    out = tmp_path / "tiny.pt"
    held_out = ct.make_batch((999, 0), 64, 16)
    summary = ct.train(_config(tiny, out, steps=40, batch=32, lr=3e-3, seed=0, save_every=20), progress=False)
    model0, _ = create_clip_model(f"{tiny}:random", seed=0)  # the run's initial weights, drawn again
    before = _fixed_loss(model0, held_out)
    model, _ = create_clip_model(f"{tiny}:{out}")
    after = _fixed_loss(model, held_out)
    assert after < before - 0.3, (before, after)
    assert summary["steps"] == 40 and len(summary["history"]) == 40
    sd = torch.load(out, weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic writes leave nothing behind
    assert set(sd) == set(model0.state_dict())


def test_resume_continues_exactly(tiny, tmp_path, one_thread):
    kw = dict(steps=6, batch=8, lr=1e-3, seed=1, save_every=2)
    full = ct.train(_config(tiny, tmp_path / "a.pt", **kw), progress=False)
    ct.train(_config(tiny, tmp_path / "b.pt", stop_after=3, **kw), progress=False)
    resumed = ct.train(_config(tiny, tmp_path / "b.pt", resume=True, **kw), progress=False)
    assert resumed["history"] == full["history"]
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_seed_fixes_the_initial_weights_whatever_the_global_rng(tiny):
    torch.manual_seed(123)
    a, _ = create_clip_model(f"{tiny}:random", seed=7)
    torch.rand(1000)
    b, _ = create_clip_model(f"{tiny}:random", seed=7)
    c, _ = create_clip_model(f"{tiny}:random", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("changes,message", [
    ({"steps": 0}, "--steps must be positive"), ({"batch": 1}, "--batch at least 2"),
    ({"save_every": 0}, "--save-every must be >= 1"), ({"resume": True}, "no training state"),
    ({"init": "/no/such.pt"}, "--init: no checkpoint"), ({"model": "no-such-model"}, "unknown CLIP model"),
])
def test_bad_settings_raise_one_line(tiny, tmp_path, changes, message):
    with pytest.raises(ClipstudioError, match=message) as info:
        ct.train(_config(tiny, tmp_path / "x.pt", **{"steps": 2, "batch": 4, **changes}), progress=False)
    assert "\n" not in str(info.value)


def test_training_evaluates_the_model_it_trains_through_the_guide_path(tiny, tmp_path, one_thread):
    logs = []
    summary = ct.train(_config(tiny, tmp_path / "e.pt", steps=2, batch=4, eval_every=2), log=logs.append,
                       progress=False)
    assert set(summary["eval"]) == {"background", "colour", "shape", "size", "position", "relation"}
    assert logs and logs[-1].startswith("step 2 loss")
    # the evaluation saw the trained weights: the same figures come from the written checkpoint
    from clipstudio.worlds.shapes.zeroshot import evaluate_model

    trained = load_clip(f"{tiny}:{tmp_path / 'e.pt'}")
    again = evaluate_model(trained, n=100, seed=10_000)
    assert again == pytest.approx(summary["eval"], abs=0.02)  # fp16 checkpoint vs fp32 weights


def test_command_trains_and_reports(tiny, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = cli_main(["train", "clip", "--model", tiny, "--steps", "2", "--batch", "8", "--lr", "1e-3", "--seed", "0",
                   "--out", str(out), "--threads", "1", "--quiet"])
    assert rc == 0 and out.exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["model"] == tiny
    rc = cli_main(["train", "clip", "--model", tiny, "--steps", "2", "--out", str(out), "--resume",
                   "--state", str(tmp_path / "nope"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no training state" in err


def test_training_defaults_are_written_once():
    """The command's defaults are the config's: nothing typed gives ClipTrainConfig()."""
    from clipstudio.cli import build_parser
    from clipstudio.commands._options import typed_settings

    args = build_parser().parse_args(["train", "clip"])
    assert ct.ClipTrainConfig(**typed_settings(args, ct.ClipTrainConfig)) == ct.ClipTrainConfig()
    assert not hasattr(args, "world")


def test_lr_schedule_warms_up_then_decays():
    lrs = [ct.lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.slow
def test_retraining_the_guide_briefly_learns_colours(tmp_path):
    """A short from-scratch run of the shipped guide recipe already reads colours (minutes on CPU)."""
    from clipstudio.worlds.shapes.zeroshot import evaluate_clip

    out = tmp_path / "shapes-guide.pt"
    ct.train(ct.ClipTrainConfig("shapes-guide", steps=300, batch=128, lr=1e-3, seed=5, out=str(out)),
             progress=False)
    acc = evaluate_clip("shapes-guide", n=40, seed=99, checkpoint=str(out))
    assert acc["background"] >= 0.9 and acc["colour"] >= 0.85, acc
