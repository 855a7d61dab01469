"The three sources load into batches; bad input fails with errors that name the file and record."
import json, warnings
import numpy as np
import pytest
import torch
from PIL import Image

from cli_ref.data import (DataError, VQADataset, collate, image_transform, load_easy_vqa, load_llava_json,
                          load_shapes, save_llava_json, family_stats)
from cli_ref.tokenizer import IGNORE_INDEX, train_bpe

@pytest.fixture(scope='module')
def tok(): return train_bpe(['what color is the shape? blue yes no circle texture marker object of colour'] * 10, 300)

def batch_of(records, tok, n=4):
    ds = VQADataset(records[:n], tok, 16, image_transform(32, (0.5,) * 3, (0.5,) * 3))
    return collate([ds[i] for i in range(len(ds))], tok.pad_id)

def check_batch(b, tok, n):
    assert b['pixel_values'].shape == (n, 3, 32, 32)
    assert ((b['input_ids'] == tok.image_id).sum(1) == 16).all()
    assert ((b['labels'] != IGNORE_INDEX).sum(1) > 0).all()
    assert (b['labels'][b['attention_mask'] == 0] == IGNORE_INDEX).all()

def test_three_sources_to_batches(tok, tmp_path, monkeypatch):
    monkeypatch.setenv('CLI_REF_DATA', str(tmp_path / 'cache'))
    easy = load_easy_vqa('test')
    assert len(easy) == 9673 and {r.family for r in easy} == {'shape', 'color', 'yes/no'}
    check_batch(batch_of(easy, tok), tok, 4)
    shapes, labels, images = load_shapes('test', n=40)
    assert len(shapes) == 200 and labels['count'].shape == (40,) and images.shape == (40, 64, 64, 3)
    assert {r.kind for r in shapes if r.family in ('texture', 'marker')} == {'local'}
    check_batch(batch_of(shapes, tok), tok, 4)
    save_llava_json(shapes[:10], tmp_path / 'd.json', tmp_path / 'img')
    llava = load_llava_json(tmp_path / 'd.json', tmp_path / 'img')
    assert [r.family for r in llava] == [r.family for r in shapes[:10]]
    check_batch(batch_of(llava, tok), tok, 4)
    stats = family_stats(shapes)
    assert abs(sum(s['share'] for s in stats.values()) - 1) < 1e-9

def test_shapes_deterministic_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv('CLI_REF_DATA', str(tmp_path))
    a, _, _ = load_shapes('train', n=20, cache=False)
    b, _, _ = load_shapes('train', n=20, cache=False)
    c, _, _ = load_shapes('test', n=20, cache=False)
    assert all(np.array_equal(x.image, y.image) and x.turns == y.turns for x, y in zip(a, b))
    assert not np.array_equal(a[0].image, c[0].image)

def write(tmp_path, recs):
    (tmp_path / 'img').mkdir(exist_ok=True)
    Image.new('RGB', (8, 8)).save(tmp_path / 'img/ok.png')
    p = tmp_path / 'data.json'
    p.write_text(recs if isinstance(recs, str) else json.dumps(recs))
    return p

GOOD = {'id': 'r1', 'image': 'ok.png', 'conversations': [{'from': 'human', 'value': '<image>\nq?'}, {'from': 'gpt', 'value': 'a'}]}

@pytest.mark.parametrize('recs,msg', [
    ('[{"id": "r1", ', r'data\.json is not valid JSON'),
    ('{"id": "r1"}', r'expected a JSON list'),
    ([{'id': 'r1', 'image': 'ok.png'}], r"record r1: no 'conversations' key"),
    ([{'id': 'r1', 'conversations': GOOD['conversations']}], r"record r1: no 'image' key"),
    ([{**GOOD, 'image': 'missing.png'}], r'record r1: image file .*missing\.png not found'),
    ([{**GOOD, 'conversations': [{'from': 'human', 'value': 'q?'}, {'from': 'gpt', 'value': 'a'}]}], r"record r1: .*'<image>'"),
    ([{**GOOD, 'conversations': [GOOD['conversations'][0], {'from': 'gpt', 'value': ''}]}], r'record r1: .*empty answer'),
    ([{**GOOD, 'conversations': [GOOD['conversations'][0]]}], r'record r1: .*human/gpt pairs'),
])
def test_bad_llava_files(tmp_path, recs, msg):
    with pytest.raises(DataError, match=msg): load_llava_json(write(tmp_path, recs), tmp_path / 'img')

def test_images_converted_or_named(tmp_path, tok):
    p = write(tmp_path, [GOOD, {**GOOD, 'id': 'g', 'image': 'gray.png'}, {**GOOD, 'id': 'x', 'image': 'rgba.png'},
                         {**GOOD, 'id': 'bad', 'image': 'corrupt.jpg'}])
    Image.new('L', (8, 8), 50).save(tmp_path / 'img/gray.png')
    Image.new('RGBA', (8, 8), (1, 2, 3, 0)).save(tmp_path / 'img/rgba.png')
    (tmp_path / 'img/corrupt.jpg').write_bytes(b'\xff\xd8 truncated')
    recs = load_llava_json(p, tmp_path / 'img')
    assert [r.load_image().mode for r in recs[:3]] == ['RGB'] * 3
    with pytest.raises(ValueError, match=r'record bad: image file .*corrupt\.jpg is not a readable image'):
        recs[3].load_image()
    before = sorted(x.name for x in (tmp_path / 'img').iterdir())
    ds = VQADataset(recs[:3], tok, 4, image_transform(16, (0.5,) * 3, (0.5,) * 3))
    _ = [ds[i] for i in range(3)]
    assert sorted(x.name for x in (tmp_path / 'img').iterdir()) == before  # the loader wrote nothing there

def test_overlong_samples_skipped_or_error(tok):
    easy = load_easy_vqa('test')[:20]
    tf = image_transform(16, (0.5,) * 3, (0.5,) * 3)
    with pytest.warns(UserWarning, match='skipped 20 of 20'):
        assert len(VQADataset(easy, tok, 64, tf, max_len=40)) == 0
    with pytest.raises(DataError, match='record easy-test-0: .* more than max_len=40'):
        VQADataset(easy, tok, 64, tf, max_len=40, on_overflow='error')
    assert len(VQADataset(easy, tok, 64, tf, max_len=200)) == 20

def test_group_turns_keeps_every_answer_once():
    from cli_ref.data import IMAGE_TOKEN, VQARecord, group_turns
    recs = [VQARecord(f'r{i}', f'img{i % 3}.png', [(f'{IMAGE_TOKEN}\nq{i}', f'a{i}')], 'f', 'global') for i in range(10)]
    multi = group_turns(recs, 3, seed=1)
    assert sorted(a for r in multi for _, a in r.turns) == sorted(f'a{i}' for i in range(10))
    for r in multi:
        assert len({int(a[1:]) % 3 for _, a in r.turns}) == 1 and len(r.turns) <= 3  # one image per conversation
        assert r.turns[0][0].startswith(IMAGE_TOKEN) and all(IMAGE_TOKEN not in q for q, _ in r.turns[1:])
    assert group_turns(recs, 1) == recs
