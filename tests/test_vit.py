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
