"The ViT is the same function as timm's VisionTransformer and transformers' CLIP/SigLIP towers."
import pytest
import torch
import timm.models.vision_transformer as tvit
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from cli_ref.core import load_state_checked
from cli_ref.vit import ViTConfig, VisionTransformer, load_hf_vision, vit_config_from_hf

def max_diff(a, b): return (a - b).abs().max().item()

@pytest.mark.parametrize('size,patch,dim,depth,heads,cls_tok', [
    (32, 8, 48, 3, 4, True), (32, 8, 48, 3, 4, False), (48, 16, 64, 2, 8, True), (28, 7, 24, 4, 2, False)])
def test_matches_timm(size, patch, dim, depth, heads, cls_tok):
    torch.manual_seed(size + dim)
    ref = tvit.VisionTransformer(img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                                 num_classes=3, class_token=cls_tok, global_pool='token' if cls_tok else 'avg',
                                 fc_norm=False).eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.2)  # nothing zero-initialised escapes the check
    ours = VisionTransformer(ViTConfig(image_size=size, patch_size=patch, dim=dim, depth=depth, n_heads=heads,
                                       mlp_dim=4 * dim, class_token=cls_tok, pool='token' if cls_tok else 'avg',
                                       n_classes=3)).eval()
    load_state_checked(ours, ref.state_dict(), 'timm')
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        final, inter = ref.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True)
        inter = [torch.cat(t[::-1], 1) if isinstance(t, tuple) else t for t in inter]
        ours_inter = ours.forward_intermediates(x)
        assert len(ours_inter) == depth
        for o, t in zip(ours_inter, inter): assert max_diff(o, t) < 1e-5
        assert max_diff(ours.forward_features(x), final) < 1e-5
        assert max_diff(ours(x), ref(x)) < 1e-5

@pytest.mark.parametrize('family', ['clip', 'siglip'])
@pytest.mark.parametrize('size,patch,dim,depth,heads', [(32, 8, 32, 3, 4), (30, 6, 48, 2, 6)])
def test_matches_transformers(family, size, patch, dim, depth, heads):
    torch.manual_seed(depth * dim)
    Cfg, Model = (CLIPVisionConfig, CLIPVisionModel) if family == 'clip' else (SiglipVisionConfig, SiglipVisionModel)
    hf = Model(Cfg(hidden_size=dim, intermediate_size=2 * dim + 8, num_hidden_layers=depth, num_attention_heads=heads,
                   image_size=size, patch_size=patch)).eval()
    for p in hf.parameters(): torch.nn.init.normal_(p, std=0.2)
    ours = load_hf_vision(VisionTransformer(vit_config_from_hf(hf.config)), hf.state_dict()).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        hs = hf(pixel_values=x, output_hidden_states=True).hidden_states
        feats = ours.forward_intermediates(x)
    assert len(feats) == depth == len(hs) - 1
    for f, h in zip(feats, hs[1:]): assert max_diff(f, h) < 1e-5

def test_indices_and_resolution():
    vit = VisionTransformer(ViTConfig.preset('tiny')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        all_ = vit.forward_intermediates(x)
        assert torch.equal(vit.forward_intermediates(x, 2)[0], all_[4])
        assert torch.equal(vit.forward_intermediates(x, [-1, 0])[1], all_[5])
        assert vit.forward_features(torch.randn(1, 3, 80, 80)).shape == (1, 100, 128)
    with pytest.raises(IndexError, match='out of range'): vit.forward_intermediates(x, [7])

def test_bad_state_dict_names_key():
    vit = VisionTransformer(ViTConfig.preset('tiny'))
    sd = vit.state_dict()
    sd['blocks.0.attn.qkv.weight'] = sd['blocks.0.attn.qkv.weight'][:10]
    with pytest.raises(ValueError, match=r"ckpt\.safetensors.*shape mismatch blocks\.0\.attn\.qkv\.weight"):
        load_state_checked(vit, sd, 'ckpt.safetensors')


def test_non_square_images_are_refused_in_one_line():
    import pytest
    from cli_ref.vit import ViTConfig, VisionTransformer
    with pytest.raises(ValueError, match=r'images of 64 x 48 pixels: the tower takes square images'):
        VisionTransformer(ViTConfig()).forward_intermediates(torch.randn(1, 3, 64, 48))


@pytest.mark.parametrize('new_size', [24, 48])  # a smaller grid (where antialiasing matters) and a larger one
def test_other_image_sizes_match_timm_and_transformers(new_size):
    "At another input size: with pos_antialias equal to timm's dynamic_img_size; without, to transformers' CLIP."
    torch.manual_seed(new_size)
    ref = tvit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                 class_token=True, global_pool='token', fc_norm=False, dynamic_img_size=True).eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.2)
    cfg = dict(image_size=32, patch_size=8, dim=32, depth=2, n_heads=4, mlp_dim=128, class_token=True, pool='token')
    ours = load_state_checked(VisionTransformer(ViTConfig(**cfg, pos_antialias=True)), ref.state_dict(), 'timm').eval()
    plain = load_state_checked(VisionTransformer(ViTConfig(**cfg)), ref.state_dict(), 'timm').eval()
    x = torch.randn(2, 3, new_size, new_size)
    with torch.no_grad():
        assert max_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-5
        if new_size < 32: assert max_diff(plain.forward_features(x), ref.forward_features(x)) > 1e-3  # the two differ here
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                                          image_size=32, patch_size=8)).eval()
    for p in hf.parameters(): torch.nn.init.normal_(p, std=0.2)
    mine = load_hf_vision(VisionTransformer(vit_config_from_hf(hf.config)), hf.state_dict()).eval()
    with torch.no_grad():
        hs = hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        assert max_diff(mine.forward_intermediates(x)[-1], hs[-1]) < 1e-4
