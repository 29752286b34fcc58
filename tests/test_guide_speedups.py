"""Guides' exact speed-ups (issue 15): frozen guides fold their BatchNorms into the convolutions before them,
and ViT towers compute their last block for the class token only; the same function and input gradient to
float32 rounding, and only where the model's layout allows it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clipstudio.guide.clip import (ClipGuide, class_token_features, class_token_only, create_clip_model,
                                   fold_batch_norms, mean_token_features, mean_token_only, pooled_token_path)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters (fresh BatchNorms are the identity, which folds trivially)."""
    generator = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.randn(n, generator=generator))
            bn.bias.data.copy_(torch.randn(n, generator=generator))
    return model


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_modified_resnet_folds_every_batch_norm_and_keeps_its_function():
    model, _ = create_clip_model("shapes-guide")
    model = randomize_batch_norms(model.eval())
    reference = randomize_batch_norms(create_clip_model("shapes-guide")[0].eval())
    assert count(model, nn.BatchNorm2d) == 19
    fold_batch_norms(model)
    assert count(model, nn.BatchNorm2d) == 0
    x = torch.rand(4, 3, 32, 32)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out_ours = reference.encode_image(x_ref), model.encode_image(x_ours)
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-4, atol=1e-4)
    out_ref.square().sum().backward(), out_ours.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-3, atol=1e-4)


def test_only_adjacent_eval_pairs_in_a_sequential_fold():
    torch.manual_seed(0)
    adjacent = randomize_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    apart = randomize_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))).eval()
    training = randomize_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))  # train mode
    x = torch.randn(2, 3, 8, 8)
    before = adjacent(x)
    fold_batch_norms(adjacent)
    assert count(adjacent, nn.BatchNorm2d) == 0 and isinstance(adjacent[1], nn.Identity)
    torch.testing.assert_close(adjacent(x), before, rtol=1e-5, atol=1e-5)
    assert count(fold_batch_norms(apart), nn.BatchNorm2d) == 1  # a ReLU between: not one affine map
    assert count(fold_batch_norms(training), nn.BatchNorm2d) == 1  # batch statistics: nothing to fold


def test_frozen_guides_fold_and_trained_ones_do_not():
    model, tokenizer = create_clip_model("shapes-guide")
    trained = ClipGuide.from_open_clip("shapes-guide", model, tokenizer, freeze=False)
    assert count(trained.model, nn.BatchNorm2d) == 19
    frozen = ClipGuide.from_open_clip("shapes-guide", *create_clip_model("shapes-guide"))
    assert count(frozen.model, nn.BatchNorm2d) == 0
    assert not any(p.requires_grad for p in frozen.model.parameters())


@pytest.mark.parametrize("arch,path", [("clipstudio-test-tiny:random", class_token_features),
                                       ("ViT-B-32:random", class_token_features),
                                       ("shapes-guide", mean_token_features), ("RN50:random", mean_token_features)])
def test_pooled_token_paths_give_the_towers_embedding_and_gradient(arch, path, tiny_clip):
    """Guides compute only what the pooled token needs: a ViT's last block for its class token, a ModifiedResNet's
    attention pool for its mean token. The tower's own output and input gradient to float32 rounding (random
    weights of the real architectures, the tests' tiny ViT, and the shapes guide, whose pool sees one position)."""
    model, _ = create_clip_model(arch)
    visual = randomize_batch_norms(model.eval().visual)
    assert pooled_token_path(visual) is path
    torch.manual_seed(0)
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    x = torch.randn(3, 3, size, size)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out_ours = visual(x_ref), path(visual, x_ours)
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-5, atol=1e-5)
    out_ref.square().sum().backward(), out_ours.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-6)


def test_class_token_path_is_only_taken_for_class_token_towers():
    resnet, _ = create_clip_model("shapes-guide")
    assert not class_token_only(resnet.visual) and not class_token_only(None)
    vit, _ = create_clip_model("clipstudio-test-tiny:random")
    vit.visual.output_tokens = True  # a tower asked for its tokens runs open_clip's own forward
    assert not class_token_only(vit.visual)


def test_a_vit_guide_takes_the_class_token_path_and_matches_open_clip(tiny_clip):
    model, tokenizer = create_clip_model(tiny_clip)
    guide = ClipGuide.from_open_clip(tiny_clip, model, tokenizer)
    assert guide._pooled_token_path is class_token_features
    images = torch.rand(2, 3, guide.image_size, guide.image_size)
    expected = nn.functional.normalize(guide.model.encode_image(guide.normalize(images)), dim=-1)
    torch.testing.assert_close(guide.encode_image(images), expected, rtol=1e-5, atol=1e-6)


def test_a_resnet_guide_takes_the_mean_token_path_and_matches_open_clip():
    guide = ClipGuide.from_open_clip("shapes-guide", *create_clip_model("shapes-guide"))
    assert guide._pooled_token_path is mean_token_features
    images = torch.rand(3, 3, guide.image_size, guide.image_size)
    expected = nn.functional.normalize(guide.model.encode_image(guide.normalize(images)), dim=-1)
    torch.testing.assert_close(guide.encode_image(images), expected, rtol=1e-5, atol=1e-6)
    vit, _ = create_clip_model("clipstudio-test-tiny:random")
    assert not mean_token_only(vit.visual) and not mean_token_only(None) and pooled_token_path(None) is None
