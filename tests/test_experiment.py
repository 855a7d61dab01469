"""The experiment's parts against independent computations: pixel shuffle, the vector quantiser, mutual information,
cached-feature forward, answer positions, and the pre-registered hypotheses on made-up runs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cli_ref.experiment import (BottleneckViT, ExperimentConfig, VectorQuantizer, answer_position, bootstrap_ci, grid_jobs,
                                hypotheses, mutual_information, object_tokens, paired, trim_padding)
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


FAMS = ('count', 'largest_shape', 'leftmost_color', 'texture', 'marker')
DECISION = {'bottleneck': dict(best_single=0, router=dict(count=5, largest_shape=0, leftmost_color=0, texture=0, marker=0), gap=6.5),
            'natural': dict(best_single=0, router={f: 0 for f in FAMS}, gap=0.0)}


def _run(tower, variant, seed, acc, layer=None, alpha=None, clamped=None):
    fams = dict(zip(FAMS, acc))
    return dict(tower=tower, variant=variant, seed=seed, families=fams, feature_layer=5 if layer is None else layer,
                params_added=0, seconds_per_step=0.5, **({'alpha': alpha} if alpha else {}),
                **({'clamped_last_bank': dict(zip(FAMS, clamped))} if clamped else {}))


def _grid(cli_gain):
    "Made-up runs of every registered arm: block 0 reads texture and colour, the baseline counts, cli adds `cli_gain`."
    early, late = (0.85, 0.5, 0.9, 0.8, 0.5), (0.99, 0.5, 0.35, 0.33, 0.5)
    alpha = {f: [[0.2, 0.3, 0.3, 0.2], [0.7 if f in ('texture', 'leftmost_color') else 0.3, 0.1, 0.1, 0.1]] for f in FAMS}
    runs = []
    for s in range(5):
        cli = [min(1, max(a, b) + cli_gain - 0.001 * s) for a, b in zip(early, late)]
        runs += [_run('bottleneck', 'block0', s, early, layer=0), _run('bottleneck', 'baseline', s, late),
                 _run('bottleneck', 'cli', s, cli, alpha=alpha, clamped=(0.99, 0.5, 0.35, 0.33, 0.5)),
                 _run('bottleneck', 'static', s, early)]
    runs += [_run('bottleneck', 'cli-last', 0, late)]
    runs += [_run('natural', v, s, early, layer=0 if v == 'block0' else None) for v in ('block0', 'cli') for s in range(3)]
    return runs


def test_hypotheses_follow_their_definitions():
    cfg = ExperimentConfig(families=FAMS)
    pilot = dict(decision=DECISION, layer_map={'bottleneck': {'0': dict(texture=0.9), '5': dict(texture=0.33)}})
    runs = _grid(0.02)
    h = hypotheses(runs, cfg, pilot)
    mean = lambda v, s: 100 * np.mean(list(next(r for r in runs if r['tower'] == 'bottleneck' and r['variant'] == v
                                                  and r['seed'] == s)['families'].values()))
    gain = [mean('cli', s) - mean('block0', s) for s in range(5)]
    router = np.mean([max(a, b) for a, b in zip((0.85, 0.5, 0.9, 0.8, 0.5), (0.99, 0.5, 0.35, 0.33, 0.5))]) * 100 - mean('block0', 0)
    assert h['P0']['held'] is True
    assert h['P1']['held'] is True and h['P1']['cli_minus_best_single']['mean'] == pytest.approx(np.mean(gain))
    assert h['P1']['cli_minus_best_single']['sd'] == pytest.approx(np.std(gain, ddof=1))
    assert h['P2']['held'] is True and h['P2']['share_of_router_gap'] == pytest.approx(np.mean(gain) / router)
    assert h['P3']['held'] is True and h['P3']['clamp_cost']['texture'] > 15
    assert h['P4']['held'] is True           # on the natural tower cli equals its best single layer
    low = hypotheses(_grid(-0.08), cfg, pilot)   # cli 8 points below each family's better layer: worse than block 0
    assert low['P1']['held'] is False and low['decision'].startswith('at this scale')
    assert low['P2']['cli_minus_own_best_single_per_family']['texture'] == pytest.approx(-8 - 0.2)
    unregistered = dict(pilot, decision={t: {**d, 'gap': 2.5} for t, d in DECISION.items()})
    assert hypotheses(runs, cfg, unregistered)['decision'].startswith('not registered: the layer maps show router - best single gaps of bottleneck +2.5')


def test_hypotheses_wait_for_their_runs():
    cfg, pilot = ExperimentConfig(families=FAMS), dict(decision=DECISION, layer_map={'bottleneck': {'0': dict(texture=0.9)}})
    runs = [r for r in _grid(0.0) if r['seed'] < 3]
    h = hypotheses(runs, cfg, pilot)
    assert h['P1']['held'] is None and h['P2']['held'] is None and h['P3']['held'] is None


def test_paired_interval_against_a_hand_computation():
    d = paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 2: 0.4})       # differences 10, 20, 30 points
    assert d['mean'] == pytest.approx(20) and d['sd'] == pytest.approx(10)
    assert d['ci95'] == pytest.approx([20 - 4.303 * 10 / 3 ** 0.5, 20 + 4.303 * 10 / 3 ** 0.5])
    lo, hi = bootstrap_ci(['1100', '1010'])                               # accuracy 50% either way
    assert lo <= 50 <= hi and hi - lo > 0


def test_grid_jobs_seed_major_with_the_router_blocks():
    jobs = grid_jobs(ExperimentConfig(), DECISION)
    assert jobs[0] == ('bottleneck', 'block0', 0) and ('bottleneck', 'baseline', 0) in jobs[:8]
    assert sum(v == 'cli' for t, v, s in jobs if t == 'bottleneck') == 5 and sum(v == 'dense' for _, v, _ in jobs) == 3
    assert sum(v == 'cli-last' for _, v, _ in jobs) == 1 and len(jobs) == len(set(jobs))


def test_trim_padding_keeps_every_real_token():
    ids = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 0, 0, 0, 0]])
    labels = torch.where(ids > 0, ids, torch.full_like(ids, IGNORE_INDEX))
    i, l = trim_padding(ids, labels, 0)
    assert i.tolist() == [[5, 6, 7], [5, 6, 0]] and (l[:, :3] == labels[:, :3]).all()


def test_quick_preset_is_small():
    q = ExperimentConfig.preset('quick')
    assert q.steps < 10 and q.train_images <= 300 and q.probe_images <= q.train_images


@pytest.mark.parametrize('gap,runs', [(2.5, False), (6.5, True)])
def test_the_grid_runs_only_when_the_map_shows_the_gap(tmp_path, monkeypatch, capsys, gap, runs):
    import cli_ref.experiment as ex
    (tmp_path / 'diagnostics.json').write_text('{}')
    grid_calls = []
    monkeypatch.setattr(ex, 'prepare', lambda cfg: {})
    monkeypatch.setattr(ex, 'pilot', lambda cfg, lanes: {'decision': {'natural': {'gap': 1.0}, 'bottleneck': {'gap': gap}}, 'wall_s': 0.0})
    monkeypatch.setattr(ex, 'grid_jobs', lambda cfg, decision: [('bottleneck', 'cli', 0)])
    monkeypatch.setattr(ex, 'run_lanes', lambda cfg, jobs, early, lanes: grid_calls.append(jobs) or 0.0)
    monkeypatch.setattr(ex, 'report', lambda cfg: {})
    ex.experiment(ExperimentConfig(results=str(tmp_path), out=str(tmp_path)), stage='all')
    assert bool(grid_calls) == runs
    assert ('the grid is not registered' in capsys.readouterr().out) != runs
