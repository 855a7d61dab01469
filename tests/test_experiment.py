"""The experiment's parts against independent computations: pixel shuffle, the vector quantiser, mutual information,
cached-feature forward, answer positions, and the pre-registered hypotheses on made-up runs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cli_ref.experiment import (BottleneckViT, ExperimentConfig, VectorQuantizer, answer_position, hypotheses,
                                mutual_information, object_tokens)
from cli_ref.tokenizer import IGNORE_INDEX
from cli_ref.vit import ViTConfig, VisionTransformer
from cli_ref.vlm import VLM, VLMConfig, perturb_zero_init, shuffle_tokens


def test_shuffle_tokens_is_pixel_unshuffle():
    "Concatenating each 2x2 cell of patch tokens = torch's pixel_unshuffle on the (D, n, n) grid, channel-last."
    x = torch.randn(2, 64, 5)                                        # (B, 8*8, D)
    grid = x.transpose(1, 2).reshape(2, 5, 8, 8)                     # (B, D, 8, 8)
    ref = F.pixel_unshuffle(grid, 2)                                 # (B, D*4, 4, 4), channel = d*4 + (a*2 + b)
    ref = ref.reshape(2, 5, 4, 4, 4).permute(0, 3, 4, 2, 1).reshape(2, 16, 20)  # -> (B, cells, (a, b, d))
    assert torch.equal(shuffle_tokens(x, 2), ref)


def test_forward_features_equals_forward():
    torch.manual_seed(0)
    for mode in ('avg', 'shuffle'):
        m = perturb_zero_init(VLM(VLMConfig.preset('tiny', variant='cli', image_pool_mode=mode,
                                                                   feature_norm=True)), std=0.2).eval()
        px, ids = torch.randn(2, 3, 64, 64), torch.cat([torch.full((2, 16), 3), torch.randint(4, 300, (2, 5))], 1)
        with torch.no_grad():
            torch.testing.assert_close(m.forward_features(m.vision_features(px), ids), m(px, ids))


def test_vector_quantizer():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4)
    z = torch.randn(3, 10, 4, requires_grad=True)
    q, codes, loss = vq(z)
    d = ((z.detach()[..., None, :] - vq.codebook.weight) ** 2).sum(-1)  # (3, 10, K), by broadcasting
    assert torch.equal(codes, d.argmin(-1))
    torch.testing.assert_close(q, vq.codebook.weight[codes])
    expected = F.mse_loss(vq.codebook.weight[codes], z.detach()) * 1.25   # codebook + 0.25 commitment (same value)
    torch.testing.assert_close(loss, expected)
    (q * torch.arange(4.)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(4.).expand(3, 10, 4))  # straight through


def test_bottleneck_tower_quantises_only_its_last_block():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=3, n_heads=4, mlp_dim=64)
    t = BottleneckViT(cfg, 4)
    x = torch.randn(5, 3, 32, 32)
    plain = VisionTransformer.forward_intermediates(t, x)
    out = t.forward_intermediates(x)
    assert all(torch.equal(a, b) for a, b in zip(out[:-1], plain[:-1]))
    codes = t.vq(plain[-1])[1]
    torch.testing.assert_close(out[-1], t.vq.codebook.weight[codes])   # each token one of the 4 codes (up to rounding)
    assert not torch.allclose(out[-1], plain[-1])


def test_mutual_information_matches_entropy_identities():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 50000), rng.integers(0, 5, 50000)
    pa = np.bincount(a) / len(a)
    h_a = -(pa * np.log2(pa)).sum()
    assert abs(mutual_information(a, a) - h_a) < 1e-9                # I(a; a) = H(a)
    assert mutual_information(a, b) < 0.002                          # independent
    assert abs(mutual_information(a, a * 5 + b) - h_a) < 1e-9        # a is a function of the pair


def test_object_tokens_cover_the_object():
    "A square of half-side 10.2 px centred at (16, 16) on a grid of 8 px cells: the 2 x 2 cells it fills (and its centre's)."
    scene = [dict(shape='square', color='red', x=16.0, y=16.0, r=12.0, texture='plain', marker=False)]
    (_, _, centre, cells), = object_tokens([scene], 8)
    assert centre == 2 * 8 + 2
    assert cells == [9, 10, 17, 18]                                  # spans 5.8..26.2: cells 1 and 2 full, 0 and 3 at 27%


def test_answer_position():
    labels = torch.tensor([[IGNORE_INDEX] * 4 + [7, 2] + [IGNORE_INDEX] * 2,
                           [IGNORE_INDEX] * 6 + [9, 2]])
    assert answer_position(labels).nonzero().tolist() == [[0, 3], [1, 5]]


def _run(tower, variant, seed, local, glob=0.8, alpha=None):
    return dict(tower=tower, variant=variant, seed=seed, local=local, **{'global': glob}, params_added=100_000,
                seconds_per_step=0.5, **({'alpha': alpha} if alpha else {}))


def test_hypotheses_follow_their_definitions():
    hi, lo = {'local': [[0.6, 0.1, 0.1, 0.2]] * 2, 'global': [[0.3, 0.2, 0.2, 0.3]] * 2}, None
    runs = [_run('bottleneck', 'baseline', s, 0.40) for s in range(3)] + \
           [_run('bottleneck', 'cli', s, 0.55 + 0.01 * s, alpha=hi) for s in range(3)] + \
           [_run('natural', 'baseline', s, 0.60) for s in range(3)] + [_run('natural', 'cli', s, 0.61) for s in range(3)]
    h = hypotheses(runs)
    assert h['H1']['held'] is True and h['H2']['held'] is True and h['H5']['held'] is True
    assert h['H3']['held'] is None and h['H4']['held'] is None           # dense, deepstack, cli-last not run: undecided
    runs[3]['local'] = 0.39                                              # one seed where cli loses: H1 fails
    assert hypotheses(runs)['H1']['held'] is False


def test_quick_preset_is_small():
    q = ExperimentConfig.preset('quick')
    assert q.steps < 10 and q.train_images <= 300 and q.probe_images <= q.train_images
