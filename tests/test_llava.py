"A tiny random LLaVA saved by transformers loads into our modules: same logits, same tokens; CLI attaches at zero-init."
import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from cli_ref.llava import attach_cli, cli_parameters, llava_config, load_adapter, load_llava, memory_plan, save_adapter

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
    assert all(p.requires_grad == n.startswith(('amp.', 'agf.', 'bank_kv.')) for n, p in cli.named_parameters())
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
