"A tiny random LLaVA saved by transformers loads into our modules: same logits, same tokens; CLI attaches at zero-init."
import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from cli_ref.finetune import memory_plan
from cli_ref.llava import attach_cli, cli_parameters, llava_config, load_adapter, load_llava, save_adapter

@pytest.fixture(scope='module', params=[(4, 4, -2), (4, 1, -1), (8, 2, -3)])
def pair(request, tmp_path_factory):
    heads, kv, layer = request.param
    torch.manual_seed(heads + kv)
    vc = CLIPVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4, image_size=32,
                          patch_size=8, projection_dim=16)
    tc = LlamaConfig(vocab_size=130, hidden_size=64, intermediate_size=112, num_hidden_layers=4, num_attention_heads=heads,
                     num_key_value_heads=kv)
    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=120,
                                                   vision_feature_layer=layer, image_seq_length=16)).eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.1)
    folder = tmp_path_factory.mktemp('llava')
    hf.save_pretrained(folder, max_shard_size='100KB')  # sharded, like the real checkpoints
    return hf, folder

def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.full((2, 1), 1), torch.full((2, 16), 120), torch.randint(2, 110, (2, 7), generator=g)], 1)
    return torch.randn(2, 3, 32, 32, generator=g), ids

def test_logits_and_generation_match(pair):
    hf, folder = pair
    assert len(list(folder.glob('model-*.safetensors'))) > 1
    ours = load_llava(folder).eval()
    px, ids = inputs()
    with torch.no_grad():
        assert (ours(px, ids) - hf(input_ids=ids, pixel_values=px).logits).abs().max() < 1e-4
        ref = hf.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(ours.generate(px, ids, max_new_tokens=6), ref)

def test_cli_zero_init_and_adapter_round_trip(pair, tmp_path):
    _, folder = pair
    base = load_llava(folder).eval()
    px, ids = inputs(1)
    cli = attach_cli(base).eval()
    with torch.no_grad(): assert torch.equal(cli(px, ids), base(px, ids))
    assert all(p.requires_grad == n.startswith(('amp.', 'injector.')) for n, p in cli.named_parameters())
    with torch.no_grad():
        for p in cli_parameters(cli).values(): p.add_(torch.randn_like(p) * 0.05)
        out = cli(px, ids)
    save_adapter(cli, tmp_path)
    back = load_adapter(load_llava(folder).eval(), tmp_path).eval()
    with torch.no_grad(): assert (back(px, ids) - out).abs().max() < 1e-6

def test_bad_checkpoints_name_the_problem(pair, tmp_path):
    hf, folder = pair
    import shutil, json
    broken = tmp_path / 'broken'; shutil.copytree(folder, broken)
    shard = sorted(broken.glob('model-*.safetensors'))[0]; shard.unlink()
    with pytest.raises(FileNotFoundError, match=f'shard .*{shard.name} is missing'): load_llava(broken)
    other = tmp_path / 'other'; shutil.copytree(folder, other)
    cfg = json.loads((other / 'config.json').read_text()); cfg['text_config']['intermediate_size'] = 100
    (other / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='shape mismatch llm.layers.0.mlp.gate_proj.weight'): load_llava(other)

def test_memory_plan_on_meta():
    mp = memory_plan('llava15_7b')
    assert 6.5e9 < mp['params'] < 7.5e9 and 0 < mp['cli_frac'] < 0.05 and mp['peak_gb_ckpt'] < mp['peak_gb']
    full, sharded = memory_plan('llava15_7b', train='cli+llm'), memory_plan('llava15_7b', train='cli+llm', gpus=8)
    assert full['trained_params'] > 0.9 * full['params'] and full['peak_gb'] > 5 * sharded['peak_gb']

def test_memory_plan_counts_one_chunk_of_logits():
    whole, chunked = (memory_plan('ov_0_5b', text_tokens=8192, answer_tokens=4096, head_chunk=k) for k in (0, 512))
    assert abs(whole['logits_gb'] / chunked['logits_gb'] - 8) < 1e-9 and whole['peak_gb'] - chunked['peak_gb'] > 4

# --- LLaVA-OneVision: SigLIP + Qwen2, AnyRes crops, unpadding, image newline ---
import numpy as np
import torch.nn.functional as F
from PIL import Image
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
                          Qwen2Config, SiglipVisionConfig)
from cli_ref.llava import AnyResVLM, anyres_transform, n_anyres_tokens

GRIDS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96]]

@pytest.fixture(scope='module', params=['anyres_max_9', 'anyres_max_1'])
def ov_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    vc = SiglipVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4, image_size=32,
                            patch_size=8)
    tc = Qwen2Config(vocab_size=130, hidden_size=64, intermediate_size=112, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True)
    hf = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(
        vision_config=vc, text_config=tc, image_token_index=120, image_grid_pinpoints=GRIDS,
        vision_aspect_ratio=request.param)).eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.1)
    folder = tmp_path_factory.mktemp('ov')
    hf.save_pretrained(folder, max_shard_size='100KB')
    return hf, folder

def ov_inputs(cfg, sizes=((40, 70), (50, 30)), seed=0):
    rng = np.random.default_rng(seed)
    out = [anyres_transform(cfg)(Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))) for hw in sizes]
    P = max(len(p) for p, _ in out)
    px = torch.stack([F.pad(p, (0, 0, 0, 0, 0, 0, 0, P - len(p))) for p, _ in out])
    n = [n_anyres_tokens(cfg, hw) for hw in sizes]
    ids = torch.tensor([[0] * (max(n) - k) + [120] * k + rng.integers(2, 110, 6).tolist() for k in n])
    return px, torch.tensor(sizes), ids, (ids != 0).long()

def test_onevision_processor_matches_transformers():
    from cli_ref.vlm import AnyResConfig, VLMConfig
    from cli_ref.vit import ViTConfig
    cfg = VLMConfig(vit=ViTConfig(image_size=32, patch_size=8), anyres=AnyResConfig(GRIDS))
    proc = LlavaOnevisionImageProcessor(size={'height': 32, 'width': 32}, image_grid_pinpoints=GRIDS,
                                        image_mean=list(cfg.vit.image_mean), image_std=list(cfg.vit.image_std))
    rng = np.random.default_rng(1)
    for hw in ((40, 70), (50, 30), (33, 100), (64, 64), (20, 25)):
        img = Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
        mine, size = anyres_transform(cfg)(img)
        theirs = proc(img, return_tensors='pt')
        assert size == tuple(theirs['image_sizes'][0].tolist()) and mine.shape == theirs['pixel_values'][0].shape
        assert (mine - theirs['pixel_values'][0]).abs().max() < 1e-5

def test_onevision_logits_and_generation_match(ov_pair):
    hf, folder = ov_pair
    ours = load_llava(folder).eval()
    assert isinstance(ours, AnyResVLM)
    px, sizes, ids, mask = ov_inputs(ours.cfg)
    with torch.no_grad():
        a = ours(px, ids, mask, image_sizes=sizes)
        b = hf(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=sizes).logits
        assert ((a - b).abs() * mask[..., None]).max() < 1e-4
        ref = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=sizes, max_new_tokens=6,
                          do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(ours.generate(px, ids, mask, max_new_tokens=6, image_sizes=sizes), ref)

def test_onevision_cli_zero_init_masked_banks_and_adapter(ov_pair, tmp_path):
    _, folder = ov_pair
    base = load_llava(folder).eval()
    px, sizes, ids, mask = ov_inputs(base.cfg, seed=2)
    cli = attach_cli(base, inject_every=1).eval()
    with torch.no_grad():
        assert torch.equal(cli(px, ids, mask, image_sizes=sizes), base(px, ids, mask, image_sizes=sizes))
        for p in cli_parameters(cli).values(): p.add_(torch.randn_like(p) * 0.05)
        out = cli(px, ids, mask, image_sizes=sizes)
        # each sample alone gives what it gets in the batch: bank padding is masked
        for i in range(2):
            n = int(mask[i].sum())
            alone = cli(px[i:i + 1], ids[i:i + 1, -n:], image_sizes=sizes[i:i + 1])
            assert (alone[0] - out[i, -n:]).abs().max() < 1e-4
    save_adapter(cli, tmp_path)
    back = load_adapter(load_llava(folder).eval(), tmp_path).eval()
    with torch.no_grad(): assert (back(px, ids, mask, image_sizes=sizes) - out).abs().max() < 1e-6

def test_hub_id_offline_names_the_problem(monkeypatch, tmp_path):
    "A hub id that is not a local folder goes through huggingface_hub, which honours HF_HUB_OFFLINE: one clear error."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match='not a local folder and could not be fetched from the hub.*HF_HUB_OFFLINE=1'):
        load_llava('llava-hf/llava-onevision-qwen2-0.5b-ov-hf')


def _tiny_llava(folder, layer=-2, projector_act='gelu', vision_act='quick_gelu', **text):
    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4, image_size=32,
                          patch_size=8, projection_dim=16, hidden_act=vision_act)
    tc = LlamaConfig(vocab_size=130, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, **text)
    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=120, vision_feature_layer=layer,
                                                   image_seq_length=16, projector_hidden_act=projector_act)).eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.1)
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize('layer', [1, 2, 4, -1, -4])
def test_feature_layer_counts_as_transformers_does(tmp_path, layer):
    "transformers' vision_feature_layer indexes hidden_states (entry 0 = embeddings): k >= 1 is block k - 1."
    hf = _tiny_llava(tmp_path, layer)
    ours = load_llava(tmp_path).eval()
    px, ids = inputs(2)
    with torch.no_grad(): assert (ours(px, ids) - hf(input_ids=ids, pixel_values=px).logits).abs().max() < 1e-4


@pytest.mark.parametrize('kw,msg', [
    (dict(layer=0), r'vision_feature_layer 0 \(the embedding output\) is not supported'),
    (dict(projector_act='quick_gelu'), r"projector_hidden_act 'quick_gelu' is not supported"),
    (dict(vision_act='gelu_new'), r"vision_config.hidden_act 'gelu_new' is not supported"),
    (dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}), r"rope scaling 'linear' is not supported"),
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                        'original_max_position_embeddings': 64}), r"rope scaling 'llama3' is not supported"),
])
def test_unsupported_fields_are_refused_with_the_checkpoint_named(tmp_path, kw, msg):
    _tiny_llava(tmp_path, **kw)
    with pytest.raises(ValueError, match=f'{tmp_path.name}.*: .*{msg}'): load_llava(tmp_path)


def test_qwen2_sliding_window_is_refused():
    from transformers import Qwen2Config
    from cli_ref.llm import llm_config_from_hf
    assert llm_config_from_hf(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=48)).qkv_bias
    with pytest.raises(ValueError, match='use_sliding_window=True is not supported'):
        llm_config_from_hf(Qwen2Config(use_sliding_window=True))


@pytest.mark.parametrize('change,msg', [
    ('drop', r"cannot load .*: tensor .*layers\.1\.self_attn\.k_proj\.weight is missing"),
    ('narrow', r"cannot load .*: tensors .*layers\.1\.self_attn\.q/k/v_proj\.weight have different shapes"),
])
def test_broken_qkv_tensors_are_named(tmp_path, change, msg):
    from safetensors.torch import load_file, save_file
    _tiny_llava(tmp_path)
    f, = tmp_path.glob('*.safetensors')
    sd = load_file(f)
    k = next(k for k in sd if k.endswith('layers.1.self_attn.k_proj.weight') and 'vision' in k)
    if change == 'drop': del sd[k]
    else: sd[k] = sd[k][:-4]
    save_file(sd, f)
    with pytest.raises(ValueError, match=msg): load_llava(tmp_path)


def test_adapter_on_a_base_with_another_feature_layer_says_why(tmp_path):
    _tiny_llava(tmp_path / 'a', layer=-2); _tiny_llava(tmp_path / 'b', layer=-1)
    save_adapter(attach_cli(load_llava(tmp_path / 'a')), tmp_path / 'adapter')
    with pytest.raises(ValueError, match=r'reads vision block 2; this base reads block 3 \(another vision_feature_layer\)'):
        load_adapter(load_llava(tmp_path / 'b'), tmp_path / 'adapter')


def test_a_folder_that_is_not_a_llava_checkpoint(tmp_path):
    import json
    with pytest.raises(FileNotFoundError, match=r'is not a llava-hf checkpoint: it has no config\.json'): load_llava(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({'hidden_size': 8}))
    with pytest.raises(ValueError, match=r'is not a llava-hf checkpoint: '): load_llava(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(ValueError, match=r"model_type 'bert' is not supported"): load_llava(tmp_path)


@pytest.mark.parametrize('field,value,msg', [('hidden_act', 'gelu', r"hidden_act 'gelu' is not supported"),
                                             ('mlp_bias', True, r'mlp_bias=True is not supported'),
                                             ('head_dim', 8, r'head_dim 8 is not hidden_size / num_attention_heads')])
def test_llm_fields_that_change_the_computation_are_refused(field, value, msg):
    from cli_ref.llm import llm_config_from_hf
    kw = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=48)
    llm_config_from_hf(LlamaConfig(**kw))                                  # the plain config loads
    with pytest.raises(ValueError, match=msg): llm_config_from_hf(LlamaConfig(**kw, **{field: value}))
