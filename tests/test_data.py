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
    ([{**GOOD, 'image': 7}], r"record r1: 'image' must be a file path \(a string\)"),
    ([{**GOOD, 'image': ['ok.png']}], r"record r1: 'image' must be a file path"),
    ([{**GOOD, 'image': '../data.json'}], r"record r1: image path '\.\./data\.json' leads outside the image folder"),
    ([{**GOOD, 'id': 1.5}], r"record 1\.5: 'id' must be a string or an integer"),
    ([{**GOOD, 'conversations': [GOOD['conversations'][0], {'from': 'gpt', 'value': None}]}], r"record r1: turn 0 gpt 'value' must be a string"),
    ([{**GOOD, 'conversations': [{'from': 'human', 'value': ['<image>']}, GOOD['conversations'][1]]}], r"record r1: turn 0 human 'value'"),
    ([{**GOOD, 'conversations': GOOD['conversations'] * 2}], r"record r1: .*exactly once \(found 2"),
    ([GOOD, GOOD], r'record r1: the id appears twice'),
    (['not a record'], r'record #0: a record must be a JSON object'),
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


def test_llava_numbers_are_text_and_non_utf8_is_named(tmp_path):
    p = write(tmp_path, [{**GOOD, 'id': 3, 'conversations': [GOOD['conversations'][0], {'from': 'gpt', 'value': 42}]}])
    r, = load_llava_json(p, tmp_path / 'img')
    assert (r.id, r.turns[0][1]) == ('3', '42')                          # a number answer is its text
    p.write_bytes(json.dumps([GOOD]).encode('utf-16'))
    with pytest.raises(DataError, match=r'data\.json is not UTF-8 text \(byte 0\)'): load_llava_json(p, tmp_path / 'img')


def test_too_small_datasets_say_so(tmp_path):
    from cli_ref.train import TrainConfig, load_data
    for recs, msg in (([], r'no records \(an empty list\)'), ([GOOD], r'1 record; holding out 10% as the test set needs at least 2')):
        cfg = TrainConfig(dataset='llava', data=str(write(tmp_path, recs)), image_folder=str(tmp_path / 'img'), vit_steps=0)
        with pytest.raises(DataError, match=msg): load_data(cfg)


def _image_zoo(folder):
    "Unusual but valid images, and three broken ones."
    folder.mkdir(exist_ok=True)
    ok = {'gray.png': Image.new('L', (9, 5), 80), 'rgba.png': Image.new('RGBA', (7, 13), (1, 2, 3, 4)),
          'palette.png': Image.new('RGB', (10, 10), (200, 10, 10)).convert('P'), 'photo.jpg': Image.new('RGB', (33, 17), (5, 99, 7)),
          'ünïcødé 图.png': Image.new('RGB', (1, 1))}
    for name, im in ok.items(): im.save(folder / name)
    (folder / 'empty.png').write_bytes(b'')
    (folder / 'text.png').write_text('not an image')
    good = (folder / 'photo.jpg').read_bytes()
    (folder / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    return list(ok), ['empty.png', 'text.png', 'truncated.jpg']


def test_check_images_accepts_unusual_and_names_broken(tmp_path):
    from cli_ref.data import VQARecord, check_images
    ok, broken = _image_zoo(tmp_path / 'img')
    rec = lambda i, name: VQARecord(f'r{i}', str(tmp_path / 'img' / name), [('<image>\nwhat is ünïcødé?', 'é')])
    good = [rec(i, n) for i, n in enumerate(ok)]
    kept, bad = check_images(good, progress=False)
    assert kept == good and bad == [] and all(r.load_image().mode == 'RGB' for r in kept)
    mixed = good + [rec(10 + i, n) for i, n in enumerate(broken)]
    with pytest.raises(DataError, match=r'record r10: image file .*empty\.png is not a readable image .*3 record\(s\) have bad images'):
        check_images(mixed, progress=False)
    with pytest.raises(DataError, match=r'3 of 8 records have unreadable images, more than the 5%'):
        check_images(mixed, 'skip', progress=False)
    kept, bad = check_images(mixed, 'skip', max_bad=0.5, workers=2, progress=False)  # two worker processes
    assert kept == good and [b['id'] for b in bad] == ['r10', 'r11', 'r12']


def test_tokenizer_without_the_image_token_is_named(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    from cli_ref.tokenizer import Tokenizer
    hf = HFTokenizer(models.BPE()); hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    hf.train_from_iterator(['hello world'] * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=['<pad>', '<s>', '</s>']))
    hf.save(str(tmp_path / 'tokenizer.json'))
    with pytest.raises(ValueError, match=r"tokenizer\.json: special token '<image>' \(image\) is not in the vocabulary"):
        Tokenizer.from_file(tmp_path)
