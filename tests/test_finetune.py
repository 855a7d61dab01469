"""Training CLI on llava-hf checkpoints (tiny random ones, built offline): transformers' logits through the training
path, the loss falls, checkpoints hold what trains and reload exactly, DDP / FSDP2 match one process, SIGKILL + resume."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_ref.data import collate, load_llava_json
from cli_ref.finetune import (FinetuneConfig, base_tokenizer, finetune, load_base, load_finetuned, make_base_dataset,
                              tiny_llava_checkpoint, toy_llava_data)
from cli_ref.llava import attach_cli, load_adapter, load_llava, save_adapter
from cli_ref.tokenizer import IGNORE_INDEX
from cli_ref.checkpoints import latest_checkpoint, read_log

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
CLI = shutil.which('cli_ref')

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A toy LLaVA-format set and a tiny LLaVA-1.5 and OneVision checkpoint whose tokenizers were trained on its text."
    root = tmp_path_factory.mktemp('ft')
    train_json, test_json = toy_llava_data(root / 'toy', n=48)
    texts = [m['value'] for r in json.loads(train_json.read_text()) for m in r['conversations']]
    return dict(root=root, train=train_json, test=test_json, images=root / 'toy' / 'images',
                llava=tiny_llava_checkpoint(root / 'llava', 'llava', texts), onevision=tiny_llava_checkpoint(root / 'onevision', 'onevision', texts))

def config(world, kind, **kw):
    return FinetuneConfig(base=str(world[kind]), data=str(world['train']), test_data=str(world['test']), image_folder=str(world['images']),
                          **{'batch_size': 8, 'log_every': 5, 'ckpt_every': 1000, **kw})

def batch(world, model, tok, cfg, n=4):
    recs = load_llava_json(world['train'], world['images'])[:n]
    ds = make_base_dataset(recs, tok, model.cfg, cfg)
    return collate([ds[i] for i in range(n)], tok.pad_id)

def logits(model, b):
    with torch.no_grad():
        return model.eval()(b['pixel_values'], b['input_ids'], b['attention_mask'], image_sizes=b.get('image_sizes'))

@pytest.mark.parametrize('kind', ['llava', 'onevision'])
def test_training_path_gives_transformers_logits_and_answer_only_labels(world, kind):
    from transformers import LlavaForConditionalGeneration, LlavaOnevisionForConditionalGeneration
    cfg = config(world, kind)
    model, tok = load_base(cfg)
    b = batch(world, model, tok, cfg)
    hf = (LlavaForConditionalGeneration if kind == 'llava' else LlavaOnevisionForConditionalGeneration).from_pretrained(world[kind]).eval()
    with torch.no_grad():
        ref = hf(input_ids=b['input_ids'], attention_mask=b['attention_mask'], pixel_values=b['pixel_values'],
                 image_sizes=b.get('image_sizes')).logits
    assert ((logits(model, b) - ref).abs() * b['attention_mask'][..., None]).max() < 1e-4
    trained = tok.decode(b['labels'][0][b['labels'][0] != IGNORE_INDEX].tolist(), skip_special=False)
    rec = load_llava_json(world['train'], world['images'])[0]
    stop = '</s>' if kind == 'llava' else '<|im_end|>'
    assert trained.replace(' ', '') == ''.join(a + stop for _, a in rec.turns)  # both assistant turns, nothing else

@pytest.mark.parametrize('kind,train,steps,lr,bound', [('llava', 'cli', 60, 1e-2, 0.8), ('onevision', 'cli', 60, 1e-2, 0.8),
                                                       ('llava', 'cli+llm', 40, 3e-3, 0.15), ('onevision', 'cli+llm', 40, 3e-3, 0.15)])
def test_loss_falls_checkpoint_holds_what_trains_and_reloads_exactly(world, tmp_path, kind, train, steps, lr, bound):
    "Memorisable: `cli` ends below 80% of its first logged loss (the frozen random LLM limits it), `cli+llm` below 15%."
    cfg = config(world, kind, train=train, steps=steps, cli_lr=lr, projector_lr=lr, llm_lr=lr, ckpt_every=steps)
    model, tok = finetune(cfg, tmp_path, progress=False)
    losses = [json.loads(l)['loss'] for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert losses[-1] < bound * losses[0], losses
    ckpt = latest_checkpoint(tmp_path)
    held = load_file(ckpt / 'adapter.safetensors')
    assert set(held) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(k.startswith(('projector.', 'amp.', 'injector.', 'image_newline') + (('llm.', 'vit.') if train == 'cli+llm' else ()))
               for k in held)
    back, tok2, _ = load_finetuned(str(world[kind]), str(tmp_path))
    b = batch(world, model, tok, cfg)
    assert torch.equal(logits(back, b), logits(model, b))

@pytest.mark.parametrize('kind', ['llava', 'onevision'])
def test_zero_init_adapter_gives_the_base_exactly(world, tmp_path, kind):
    cfg = config(world, kind)
    model, tok = load_base(cfg)
    save_adapter(model, tmp_path)
    b = batch(world, model, tok, cfg)
    assert torch.equal(logits(load_adapter(load_llava(world[kind]), tmp_path), b), logits(load_llava(world[kind]), b))

def test_gradient_checkpointing_changes_nothing(world, tmp_path):
    a, _ = finetune(config(world, 'llava', train='cli+llm', steps=3, gradient_checkpointing=False), tmp_path / 'a', progress=False)
    b, _ = finetune(config(world, 'llava', train='cli+llm', steps=3, gradient_checkpointing=True), tmp_path / 'b', progress=False)
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-6

def test_head_in_chunks_changes_nothing(world, tmp_path, monkeypatch):
    import cli_ref.vlm
    chunks, plain = [], cli_ref.vlm.chunked_token_losses
    monkeypatch.setattr(cli_ref.vlm, 'chunked_token_losses', lambda h, head, t, k: chunks.append((len(h), k)) or plain(h, head, t, k))
    a, _ = finetune(config(world, 'onevision', train='cli+llm', steps=3, log_every=1), tmp_path / 'a', progress=False)
    b, _ = finetune(config(world, 'onevision', train='cli+llm', steps=3, log_every=1, head_chunk=3), tmp_path / 'b', progress=False)
    la, lb = ([r['loss'] for r in read_log(tmp_path / d) if 'loss' in r] for d in 'ab')
    assert len(la) == 3 and len(chunks) == 3 and all(n > k == 3 for n, k in chunks)   # one call a step, longer than a chunk
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-5

def cli_args(world, kind, train, out, steps=3, extra=()):
    return ['train', '--base', str(world[kind]), '--data', str(world['train']), '--test-data', str(world['test']),
            '--image-folder', str(world['images']), '--train', train, '--steps', str(steps), '--batch-size', '8',
            '--cli-lr', '3e-3', '--projector-lr', '3e-3', '--llm-lr', '3e-3', '--quiet', '--eval-limit', '4',
            '--dtype', 'fp32', '--output', str(out), *extra]

@pytest.mark.parametrize('kind,train,port', [('onevision', 'cli+llm', 29561), ('llava', 'cli', 29562)])
def test_two_processes_take_the_steps_of_one(world, tmp_path, kind, train, port):
    "FSDP2 (cli+llm) and DDP (cli) under torchrun on the CPU (gloo) end where one process with the same global batch does."
    one = subprocess.run([CLI, *cli_args(world, kind, train, tmp_path / 'one')], env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port),
                          '--no-python', CLI, *cli_args(world, kind, train, tmp_path / 'two', extra=('--device', 'cpu'))],
                         env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert '2 process(es)' in two.stdout and 'test accuracy:' in two.stdout
    a = load_file(latest_checkpoint(tmp_path / 'one') / 'adapter.safetensors')
    b = load_file(latest_checkpoint(tmp_path / 'two') / 'adapter.safetensors')
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

def test_sigkill_then_resume_gives_the_same_adapter(world, tmp_path):
    args = lambda out: cli_args(world, 'llava', 'cli+llm', out, steps=12, extra=('--ckpt-every', '3'))
    assert subprocess.run([CLI, *args(tmp_path / 'full')], env=ENV, capture_output=True).returncode == 0
    p = subprocess.Popen([CLI, *args(tmp_path / 'cut')], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while latest_checkpoint(tmp_path / 'cut') is None and time.time() - t0 < 300: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = latest_checkpoint(tmp_path / 'cut')
    assert killed_at is not None and killed_at.name < 'ckpt-000012', killed_at
    r = subprocess.run([CLI, *args(tmp_path / 'cut'), '--resume'], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ('adapter.safetensors', 'optim.safetensors'):
        a, b = load_file(latest_checkpoint(tmp_path / 'full') / f), load_file(latest_checkpoint(tmp_path / 'cut') / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f

def last_line_error(args):
    r = subprocess.run([CLI, *args], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    return r.stderr.strip().splitlines()[-1]

def test_bad_bases_and_tokenizers_are_one_line_errors(world, tmp_path):
    no_ckpt = tmp_path / 'empty'; no_ckpt.mkdir()
    assert 'is not a llava-hf checkpoint' in last_line_error(cli_args(world, 'llava', 'cli', tmp_path / 'o')[:2] + [str(no_ckpt)]
                                                            + cli_args(world, 'llava', 'cli', tmp_path / 'o')[3:])
    bad = tmp_path / 'noimage'; shutil.copytree(world['llava'], bad)
    t = json.loads((bad / 'tokenizer.json').read_text())  # the image token taken out of the vocabulary
    t['added_tokens'] = [a for a in t['added_tokens'] if a['content'] != '<image>']
    del t['model']['vocab']['<image>']
    (bad / 'tokenizer.json').write_text(json.dumps(t))
    line = last_line_error(['train', '--base', str(bad), '--data', str(world['train']), '--image-folder', str(world['images'])])
    assert "special token '<image>' (image) is not in the vocabulary" in line and str(bad) in line
    other = tmp_path / 'othertok'; shutil.copytree(world['llava'], other)
    shutil.copy(world['onevision'] / 'tokenizer.json', other / 'tokenizer.json')
    with pytest.raises(ValueError, match="not this checkpoint's tokenizer|not in the vocabulary"):
        base_tokenizer(other, load_llava(world['llava']).cfg)
    assert 'needs --data' in last_line_error(['train', '--base', str(world['llava'])])
    assert 'holds no adapter' in last_line_error(['eval', '--base', str(world['llava']), '--adapter', str(tmp_path),
                                                  '--data', str(world['train']), '--image-folder', str(world['images'])])
