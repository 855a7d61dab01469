"End-to-end training: a run killed with SIGKILL resumes to the same weights; DDP matches one process; bad input."
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_ref.checkpoints import latest_checkpoint
from cli_ref.train import TrainConfig, TrainingError, train

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
CLI = shutil.which('cli_ref')  # the console script `pip install -e .` put on PATH
TRAIN = [CLI, 'train', '--vit-steps', '0', '--batch-size', '8', '--eval-limit', '16', '--quiet', '--dtype', 'fp32']

def run(args, **kw):
    return subprocess.run(TRAIN + args, env=ENV, capture_output=True, text=True, **kw)

def weights(out):
    return load_file(latest_checkpoint(Path(out)) / 'model.safetensors')

def test_sigkill_then_resume_gives_the_same_weights(tmp_path):
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    assert run(['--steps', '24', '--ckpt-every', '8', '--output', str(full)]).returncode == 0
    # the same run, killed with SIGKILL once its first checkpoint exists, then resumed
    p = subprocess.Popen(TRAIN + ['--steps', '24', '--ckpt-every', '8', '--output', str(cut)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while latest_checkpoint(cut) is None and time.time() - t0 < 300: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = latest_checkpoint(cut)
    assert killed_at is not None and killed_at.name < 'ckpt-000024', killed_at
    r = run(['--steps', '24', '--ckpt-every', '8', '--output', str(cut), '--resume'])
    assert r.returncode == 0, r.stderr
    a, b = weights(full), weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(l)['step'] for l in (cut / 'log.jsonl').read_text().splitlines()]
    assert logged == sorted(set(logged))  # resuming rewrote nothing twice

def test_ddp_two_processes_match_one(tmp_path):
    args = ['--vit-steps', '0', '--steps', '3', '--batch-size', '8', '--eval-limit', '8', '--quiet', '--dtype', 'fp32']
    one = subprocess.run([CLI, 'train', *args, '--output', str(tmp_path / 'one')],
                         env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533',
                          '--no-python', CLI, 'train', *args, '--device', 'cpu', '--output', str(tmp_path / 'two')],
                         env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'test accuracy:' in two.stdout
    l1 = [json.loads(l)['loss'] for l in (tmp_path / 'one/log.jsonl').read_text().splitlines()]
    l2 = [json.loads(l)['loss'] for l in (tmp_path / 'two/log.jsonl').read_text().splitlines()]
    assert len(l1) == len(l2) == 1 and abs(l1[0] - l2[0]) < 1e-4, (l1, l2)
    a, b = weights(tmp_path / 'one'), weights(tmp_path / 'two')
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(vit_steps=0, instruct_steps=6, batch_size=4, ckpt_every=2, log_every=1, lr=1e30, new_lr=1e30, vision_lr=1e30,
                      clip=1e30, vocab_size=256)
    with pytest.raises(TrainingError, match=r'loss is (nan|inf) at step \d+: training stopped; the last good checkpoint'):
        train(cfg, tmp_path, progress=False)

def test_cli_errors_are_one_line(tmp_path):
    for args, msg in [(['--variant', 'clii'], "invalid choice: 'clii'"), (['--dataset', 'coco'], "invalid choice: 'coco'"),
                      (['--preset', 'huge'], "invalid choice: 'huge'")]:
        r = run(args + ['--output', str(tmp_path / 'x')])
        assert r.returncode == 2 and msg in r.stderr
    (tmp_path / 'bad.json').write_text('{"not": "a list"}')
    r = run(['--data', str(tmp_path / 'bad.json'), '--image-folder', str(tmp_path), '--output', str(tmp_path / 'y')])
    assert r.returncode == 2 and r.stderr.strip().count('\n') == 0 and 'expected a JSON list' in r.stderr
    r = subprocess.run([CLI, 'eval', '--checkpoint', str(tmp_path)], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'is not a cli_ref run or checkpoint' in r.stderr

def test_llava_data_without_test_file_holds_out_a_tenth(tmp_path):
    from PIL import Image
    from cli_ref.train import load_data
    (tmp_path / 'img').mkdir(); Image.new('RGB', (8, 8)).save(tmp_path / 'img/a.png')
    recs = [{'id': f'r{i}', 'image': 'a.png', 'conversations': [{'from': 'human', 'value': '<image>\nq?'},
                                                                {'from': 'gpt', 'value': 'a'}]} for i in range(20)]
    (tmp_path / 'd.json').write_text(json.dumps(recs))
    cfg = TrainConfig(dataset='llava', data=str(tmp_path / 'd.json'), image_folder=str(tmp_path / 'img'), vit_steps=0)
    train_recs, test_recs, pre = load_data(cfg)
    assert [r.id for r in test_recs] == ['r18', 'r19'] and len(train_recs) == 18 and pre is None
    assert load_data(cfg, train=False)[1] == test_recs

def _llava_set(folder, n=40, bad=(), n_broken=0):
    "n records over 4 small images (those named in `bad` written broken), after `n_broken` records of one broken image."
    from PIL import Image
    (folder / 'img').mkdir(parents=True, exist_ok=True)
    for name in [f'im{k}.png' for k in range(4)] + ['broken.png']:
        if name in bad or name == 'broken.png': (folder / 'img' / name).write_bytes(b'\x89PNG\r\n\x1a\n truncated')
        else: Image.new('RGB', (8 + len(name), 8), (10 * len(name), 10, 10)).save(folder / 'img' / name)
    conv = lambda i: [{'from': 'human', 'value': '<image>\nwhat colour?'}, {'from': 'gpt', 'value': f'c{i % 4}'}]
    recs = [{'id': f'b{i}', 'image': 'broken.png', 'conversations': conv(i)} for i in range(n_broken)] + \
           [{'id': f'r{i}', 'image': f'im{i % 4}.png', 'conversations': conv(i)} for i in range(n)]
    (folder / 'd.json').write_text(json.dumps(recs))
    return ['--data', str(folder / 'd.json'), '--image-folder', str(folder / 'img'), '--steps', '2', '--ckpt-every', '1']

def test_bad_image_stops_before_training_with_one_last_line(tmp_path):
    args = _llava_set(tmp_path, bad=('im2.png',))
    r = subprocess.run(TRAIN[:-3] + args + ['--output', str(tmp_path / 'run')], env=ENV, capture_output=True, text=True)  # progress bars on
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"cli_ref train: error: record r2: image file .*im2\.png is not a readable image .*", last), last
    assert latest_checkpoint(tmp_path / 'run') is None                 # nothing trained: the check comes first
    r = subprocess.run([CLI, 'train', '--debug'] + TRAIN[2:] + args + ['--output', str(tmp_path / 'run2')], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'Traceback' in r.stderr                # --debug shows where

def test_bad_images_skip_lists_them_and_trains(tmp_path):
    args = _llava_set(tmp_path, n=100, bad=('im3.png',))                # a quarter of the records: more than 5%
    r = run(args + ['--bad-images', 'skip', '--output', str(tmp_path / 'run')])
    assert r.returncode == 2 and 'records have unreadable images, more than the 5%' in r.stderr, r.stderr
    args = _llava_set(tmp_path / 'few', n=100, n_broken=3)              # 3 of 91 training records
    r = run(args + ['--bad-images', 'skip', '--output', str(tmp_path / 'run2')])
    assert r.returncode == 0, r.stderr
    assert 'pretrained on 256,000 generated images (19_tower); frozen' in r.stdout and 'vision (lr' not in r.stdout  # frozen: measured best
    assert 'the most common training answer of each family scores' in r.stdout and (tmp_path / 'run2' / 'report.png').exists()
    assert [b['id'] for b in json.loads((tmp_path / 'run2' / 'skipped_images.json').read_text())] == ['b0', 'b1', 'b2']

def test_eval_and_ask_give_the_same_one_line_errors(tmp_path):
    args = _llava_set(tmp_path, n=40)
    assert run(args + ['--output', str(tmp_path / 'run')]).returncode == 0
    (tmp_path / 'img' / 'broken.png').write_text('not an image')
    bad = [{'id': 't1', 'image': 'broken.png', 'conversations': [{'from': 'human', 'value': '<image>\nq'}, {'from': 'gpt', 'value': 'a'}]}]
    (tmp_path / 'test.json').write_text(json.dumps(bad))
    for cmd, expect in [
        (['eval', '--checkpoint', str(tmp_path / 'run'), '--data', str(tmp_path / 'test.json'), '--image-folder', str(tmp_path / 'img')],
         r"cli_ref eval: error: record t1: image file .*broken\.png is not a readable image .*"),
        (['ask', '--checkpoint', str(tmp_path / 'run'), '--image', str(tmp_path / 'img' / 'broken.png'), '--question', 'q'],
         r"cli_ref ask: error: .*broken\.png is not a readable image.*"),
        (['ask', '--checkpoint', str(tmp_path / 'run'), '--image', str(tmp_path / 'nope.png'), '--question', 'q'],
         r"cli_ref ask: error: .*nope\.png not found"),
        (['ask', '--checkpoint', str(tmp_path / 'run'), '--image', str(tmp_path / 'img' / 'im0.png'), '--question', 'q ' * 400],
         r"cli_ref ask: error: .*longer than max_len.*")]:
        r = subprocess.run([CLI] + cmd, env=ENV, capture_output=True, text=True)
        assert r.returncode == 2 and 'Traceback' not in r.stderr, (cmd[0], r.stderr[-500:])
        assert re.fullmatch(expect, r.stderr.strip().splitlines()[-1]), r.stderr[-300:]
    # a file given to eval is scored whole; without --data, the run's own held-out split, and the first line says which
    good = json.loads((tmp_path / 'd.json').read_text())[:12]
    (tmp_path / 'twelve.json').write_text(json.dumps(good))
    r = subprocess.run([CLI, 'eval', '--checkpoint', str(tmp_path / 'run'), '--data', str(tmp_path / 'twelve.json'),
                        '--image-folder', str(tmp_path / 'img')], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[0].endswith('twelve.json: 12 records') and '(n=12)' in r.stdout, r.stdout + r.stderr
    r = subprocess.run([CLI, 'eval', '--checkpoint', str(tmp_path / 'run')], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and re.match(r'scoring the held-out last 10% of .*d\.json \(the run\): 4 records', r.stdout), r.stdout

def test_unusual_valid_images_and_text_train(tmp_path):
    "Grayscale, RGBA, palette and JPEG files of odd, non-square sizes, unicode file names and text: all train."
    from PIL import Image
    (tmp_path / 'img').mkdir()
    ims = {'grå.png': Image.new('L', (9, 5), 80), 'rgba.png': Image.new('RGBA', (7, 13), (1, 2, 3, 4)),
           'palette.png': Image.new('RGB', (10, 10), (200, 10, 10)).convert('P'), 'photo 图.jpg': Image.new('RGB', (33, 17), (5, 99, 7))}
    for name, im in ims.items(): im.save(tmp_path / 'img' / name)
    recs = [{'id': f'r{i}', 'image': name, 'conversations': [{'from': 'human', 'value': '<image>\nwelche Farbe, 颜色?'},
                                                              {'from': 'gpt', 'value': ['grün', 'rot', 'blå', '绿'][i % 4]}]}
            for i, name in enumerate(list(ims) * 5)]
    (tmp_path / 'd.json').write_text(json.dumps(recs, ensure_ascii=False), encoding='utf-8')
    r = run(['--data', str(tmp_path / 'd.json'), '--image-folder', str(tmp_path / 'img'), '--steps', '2', '--output', str(tmp_path / 'run'),
             '--pos-init', 'sincos'])
    assert r.returncode == 0 and 'test accuracy' in r.stdout, r.stderr[-500:]
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['model']['vit']['pos_init'] == 'sincos'   # the option reached the tower

def test_feature_cache_gives_the_pixel_path_exactly(tmp_path):
    "The instruct stage reads the frozen tower's output from `FeatureCache`: the same features, the same logits."
    from cli_ref.data import collate
    from cli_ref.train import FeatureCache, build_tokenizer, load_data, make_dataset, model_config
    from cli_ref.vlm import VLM
    cfg = TrainConfig(dataset='shapes', shapes_images=64, vit_steps=0)
    recs = load_data(cfg)[0][:40]
    tok = build_tokenizer(recs, 256)
    model = VLM(model_config(cfg, tok)).eval()
    ds = make_dataset(recs, tok, model.cfg, cfg)
    cache = FeatureCache(model, ds, 'fp32', torch.device('cpu'), batch=7)
    assert len(cache.image_of.unique()) == len({r.image.ctypes.data for r in recs}) == 8  # each image once (5 questions each)
    idx = [3, 17, 0, 39, 22]
    a, b = cache.batch(ds, idx, tok.pad_id), collate([ds[i] for i in idx], tok.pad_id)
    with torch.no_grad():
        pixels = model.vision_features(b['pixel_values'])
        assert all(torch.equal(a['features'][k], pixels[k]) for k in pixels)
        assert torch.equal(model(None, a['input_ids'], a['attention_mask'], features=a['features']),
                           model(b['pixel_values'], b['input_ids'], b['attention_mask']))


def _bomb(path):
    "A PNG whose header claims 20,000 x 20,000 pixels: PIL refuses it as a possible decompression bomb (not an OSError)."
    import struct, zlib
    from PIL import Image
    Image.new('RGB', (8, 8)).save(path)
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack('>II', 20000, 20000)                       # IHDR width, height
    b[29:33] = struct.pack('>I', zlib.crc32(bytes(b[12:29])))          # the chunk's CRC
    path.write_bytes(bytes(b))

def test_decompression_bomb_is_a_one_line_error_or_skipped(tmp_path):
    args = _llava_set(tmp_path, n=100)
    _bomb(tmp_path / 'img' / 'im2.png')
    r = run(args + ['--output', str(tmp_path / 'run')])
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert re.search(r"record r2: image file .*im2\.png is not a readable image \(DecompressionBombError", r.stderr.strip().splitlines()[-1])

def test_llava_layouts_bom_jsonl_and_messages_train(tmp_path):
    "JSON Lines with a UTF-8 byte-order mark, half the records in the role/content `messages` layout: accepted by content."
    args = _llava_set(tmp_path, n=40)
    recs = json.loads((tmp_path / 'd.json').read_text())
    for r in recs[::2]:
        q, a = r.pop('conversations')
        r['messages'] = [{'role': 'user', 'content': q['value']}, {'role': 'assistant', 'content': a['value']}]
    (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps(r) for r in recs) + '\n', encoding='utf-8-sig')
    args[1] = str(tmp_path / 'd.jsonl')
    r = run(args + ['--output', str(tmp_path / 'run'), '--lr', '5e-4', '--new-lr', '1e-3', '--warmup', '0.2'])
    assert r.returncode == 0, r.stderr
    assert 'test accuracy' in r.stdout and 'projector (lr 0.0005), amp (lr 0.001)' in r.stdout, r.stdout
    assert json.loads(next((tmp_path / 'run').glob('ckpt-*/state.json')).read_text())['config']['warmup'] == 0.2
    (tmp_path / 'bad.jsonl').write_text(json.dumps(recs[0]) + '\n{"id": \n')
    args[1] = str(tmp_path / 'bad.jsonl')
    r = run(args + ['--output', str(tmp_path / 'run2')])
    assert r.returncode == 2 and re.search(r'bad\.jsonl, line 2: not valid JSON Lines', r.stderr.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_a_checkpoint_says_so_and_resumes(tmp_path, sig):
    "Ctrl-C or SIGTERM in the instruct stage: the step is finished, a checkpoint written, one line says where; --resume ends the run."
    out = tmp_path / 'run'
    args = ['--steps', '200', '--ckpt-every', '1000', '--output', str(out)]
    p = subprocess.Popen(TRAIN + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / 'log.jsonl'
    for _ in range(600):
        if log.exists() and log.read_text().strip(): break
        time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert p.returncode == 130 and 'Traceback' not in err, err[-800:]
    m = re.fullmatch(rf"cli_ref train: stopped by {sig.name} at step (\d+) of 200; checkpoint .*ckpt-(\d+) written: --resume continues from it", last)
    assert m and int(m[1]) == int(m[2]) and latest_checkpoint(out).name.endswith(m[2]), last
    r = run(args + ['--resume'])
    assert r.returncode == 0 and 'test accuracy' in r.stdout, r.stderr[-500:]


def test_one_bar_a_stage_and_resume_names_what_differs(tmp_path):
    args = [CLI, 'train', '--vit-steps', '2', '--steps', '3', '--batch-size', '8', '--eval-limit', '8', '--output', str(tmp_path / 'r')]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    assert 'stage vit (1/2)' in r.stderr and 'stage instruct (2/2)' in r.stderr            # each stage its own bar and rate
    assert r.stdout.strip().splitlines()[-1].startswith(f"run folder {tmp_path / 'r'}")     # where it wrote
    r = subprocess.run(args + ['--resume', '--lr', '2e-3', '--quiet'], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and 'lr: 0.001 in the run, 0.002 now' in r.stderr.strip().splitlines()[-1], r.stderr[-500:]


def test_a_stalled_family_is_named_during_training_and_in_the_report(tmp_path):
    "A run that cannot learn (learning rates 0) keeps every family at or above its prior's loss: each is named, once at"
    "half the stage and once in the final report, and the run folder keeps the priors and each family's loss curve."
    r = run(['--steps', '20', '--lr', '0', '--new-lr', '0', '--output', str(tmp_path / 'run')])
    assert r.returncode == 0, r.stderr
    named = [l for l in r.stdout.splitlines() if 'has not left its plateau' in l]
    during, report = [l for l in named if 'step 10:' in l], [l for l in named if 'step 10:' not in l]
    named_families = {'color', 'shape', 'yes/no'}   # not 'restate': its answer is in its question, nothing to learn from the image
    assert {l.split('family ')[1].split()[0] for l in during} == named_families, r.stdout
    assert len(report) == 3 and all(l.startswith('  family ') for l in report), r.stdout
    log = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert set(log[-1]['family_loss']) == named_families | {'restate'}
    assert json.loads((tmp_path / 'run' / 'family_priors.json').read_text())['yes/no'] > 0


def test_spread_run_records_a_seed_and_resumes(tmp_path):
    from cli_ref.evaluate import spread_run, spread_table
    kw = dict(root=tmp_path / 'runs', results=tmp_path / 'results', n_train=40, n_test=8, instruct_steps=4, batch_size=8)
    rec = spread_run('quadrants', 3, **kw)
    assert set(rec['families']) == {'count', 'has_shape', 'quadrant_color'} and rec['seed'] == 3
    assert set(rec['plateau_exit']) >= {'count', 'quadrant_color'} and rec['family_loss']
    assert spread_run('quadrants', 3, **kw) == rec                  # recorded: read, not rerun (the same wall time)
    with pytest.raises(ValueError, match='instruct_steps: 4 in the record, 999 now'):   # another recipe: never reused
        spread_run('quadrants', 3, **{**kw, 'instruct_steps': 999})
    from cli_ref.vlm import VLMConfig
    with pytest.raises(ValueError, match='model.variant: "cli" in the record, "baseline" now'):   # another model: another recipe
        spread_run('quadrants', 3, **{**kw, 'model': VLMConfig.preset('tiny', variant='baseline')})
    assert 'best - worst' in spread_table([rec])
