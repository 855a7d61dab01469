"The pretrained tower: `cli_ref pretrain-tower` end to end, stopped and resumed exactly; the tower files `train` accepts and refuses."
import json, re, signal, subprocess, time
from pathlib import Path

import torch
from safetensors.torch import load_file

from cli_ref.checkpoints import PRETRAINED_TOWERS, latest_checkpoint, read_tower
from cli_ref.vit import ViTConfig
from test_train import CLI, ENV, _llava_set, run

PRETRAIN = [CLI, 'pretrain-tower', '--quick', '--quiet']

def test_quick_pretraining_writes_a_tower_that_train_starts_from(tmp_path):
    r = subprocess.run(PRETRAIN + ['--output', str(tmp_path / 't')], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    probes = json.loads((tmp_path / 't' / 'probes.json').read_text())['probes']
    assert set(probes) == {'random', 'pretrained'} and all(len(p['glyph']) == 6 for p in probes.values())
    assert '| pretrained | glyph |' in r.stdout
    sd, made = read_tower(tmp_path / 't' / 'tower.safetensors', ViTConfig.preset('tiny'))
    assert made['images'] == 6 * 8 and made['made_by'] == 'cli_ref pretrain-tower'
    r = run(_llava_set(tmp_path) + ['--tower', str(tmp_path / 't' / 'tower.safetensors'), '--output', str(tmp_path / 'run')])
    assert r.returncode == 0, r.stderr[-800:]
    assert f"tower: {tmp_path / 't' / 'tower.safetensors'}, pretrained on 48 generated images" in r.stdout
    trained = load_file(latest_checkpoint(tmp_path / 'run') / 'model.safetensors')
    assert all(torch.equal(trained[f'vit.{k}'], v) for k, v in sd.items())   # frozen: the run's tower is the file's

def test_sigterm_then_resume_gives_the_same_tower(tmp_path):
    args = ['--steps', '40']
    assert subprocess.run(PRETRAIN + args + ['--output', str(tmp_path / 'full')], env=ENV).returncode == 0
    cut = tmp_path / 'cut'
    p = subprocess.Popen(PRETRAIN + args + ['--output', str(cut)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while latest_checkpoint(cut) is None and time.time() - t0 < 120: time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate()[1]
    assert p.returncode == 130 and 'Traceback' not in err, err[-500:]
    assert re.fullmatch(r'cli_ref pretrain-tower: stopped by SIGTERM at step \d+ of 40; checkpoint .* written: --resume continues from it',
                        err.strip().splitlines()[-1]), err[-300:]
    stopped = latest_checkpoint(cut).name
    assert stopped < 'ckpt-000040' and not (cut / 'tower.safetensors').exists()
    r = subprocess.run(PRETRAIN + args + ['--output', str(cut)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith('pass --resume to continue that run, or choose another --output')
    assert subprocess.run(PRETRAIN + args + ['--output', str(cut), '--resume'], env=ENV).returncode == 0
    a, b = (load_file(tmp_path / d / 'tower.safetensors') for d in ('full', 'cut'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stopped

def test_the_own_data_default_is_the_shipped_tower_and_bad_towers_are_one_line(tmp_path):
    assert PRETRAINED_TOWERS['tiny'].exists()                             # in the package: no download
    args = _llava_set(tmp_path)
    r = run(args + ['--output', str(tmp_path / 'run')])
    assert r.returncode == 0, r.stderr[-500:]
    assert f"tower: {PRETRAINED_TOWERS['tiny']}, pretrained on 256,000 generated images (19_tower); frozen" in r.stdout
    r = run(args + ['--tower', 'random', '--output', str(tmp_path / 'random')])
    assert r.returncode == 0 and 'tower: random and frozen' in r.stdout, r.stderr[-500:]
    assert json.loads((tmp_path / 'random' / 'config.json').read_text())['train']['tower'] == ''
    (tmp_path / 'bad.safetensors').write_bytes(b'\x00' * 64)
    for tower, expect in [(tmp_path / 'bad.safetensors', r'.*bad\.safetensors is not a tower file .*'),
                          (tmp_path / 'none.safetensors', r'no tower file at .*none\.safetensors'),
                          ('pretrained', r'no pretrained tower ships for this ViT .*')]:
        extra = ['--preset', 'small'] if tower == 'pretrained' else []
        r = run(args + ['--tower', str(tower), '--output', str(tmp_path / 'x')] + extra)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and 'Traceback' not in r.stderr and re.fullmatch(r'cli_ref train: error: ' + expect, last), last
