"The decoder equals transformers' Llama/Qwen2; cached decoding equals recompute; padding changes nothing."
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cli_ref.llm import LLM, LLMConfig, generate, llm_config_from_hf, load_hf_llm

@pytest.mark.parametrize('kind,heads,kv,tie,dim', [
    ('llama', 4, 4, False, 64), ('llama', 8, 2, False, 64), ('llama', 6, 1, True, 48),
    ('qwen2', 4, 2, True, 32), ('qwen2', 6, 3, False, 48), ('qwen2', 8, 8, False, 64)])
def test_logits_match_transformers(kind, heads, kv, tie, dim):
    torch.manual_seed(heads * 10 + kv)
    Cfg, Model = (LlamaConfig, LlamaForCausalLM) if kind == 'llama' else (Qwen2Config, Qwen2ForCausalLM)
    hf = Model(Cfg(vocab_size=97, hidden_size=dim, intermediate_size=2 * dim + 16, num_hidden_layers=3,
                   num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tie,
                   max_position_embeddings=256, rope_theta=1e4 if kind == 'llama' else 1e6)).eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.1)
    ours = load_hf_llm(LLM(llm_config_from_hf(hf.config)), hf.state_dict()).eval()
    assert ours.cfg.qkv_bias == (kind == 'qwen2') and ours.cfg.n_kv_heads == kv
    ids = torch.randint(0, 97, (3, 40))
    with torch.no_grad(): assert (ours(ids) - hf(ids).logits).abs().max() < 1e-4

def test_wrong_checkpoint_names_key():
    lm = LLM(LLMConfig.preset('tiny'))
    sd = {'model.' + k: v for k, v in lm.state_dict().items() if k != 'lm_head.weight'}
    sd['model.layers.2.mlp.up_proj.weight'] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"lm_head\.weight.*shape mismatch layers\.2\.mlp\.up_proj\.weight"):
        load_hf_llm(lm, sd)

@pytest.fixture(scope='module')
def lm():
    torch.manual_seed(0)
    m = LLM(LLMConfig.preset('tiny', n_kv_heads=1)).eval()
    for p in m.parameters(): nn.init.normal_(p, std=0.2)  # peaked distributions: greedy ties are unlikely
    return m

def test_cache_equals_recompute(lm):
    prompt = torch.randint(0, 384, (2, 9))
    with torch.no_grad():
        cache, am = lm.new_cache(2), torch.ones(2, 9, dtype=torch.long)
        step = lm(prompt, attention_mask=am, cache=cache)[:, -1]
        seq = prompt
        for _ in range(12):  # logits of every cached step equal the full recompute
            nxt = step.argmax(-1, keepdim=True)
            seq, am = torch.cat([seq, nxt], 1), torch.cat([am, torch.ones(2, 1, dtype=torch.long)], 1)
            full = lm(seq)[:, -1]
            step = lm(nxt, attention_mask=am, cache=cache)[:, -1]
            assert (step - full).abs().max() < 1e-4
    assert torch.equal(generate(lm, prompt, max_new_tokens=20), generate(lm, prompt, max_new_tokens=20, use_cache=False))

def test_causality(lm):
    ids = torch.randint(0, 384, (1, 16))
    with torch.no_grad():
        base = lm(ids)
        for t in (3, 10, 15):
            changed = ids.clone(); changed[0, t] = (ids[0, t] + 7) % 384
            out = lm(changed)
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
            assert not torch.allclose(out[:, t], base[:, t])

def test_padded_batch_matches_alone(lm):
    prompts = [torch.randint(1, 384, (n,)) for n in (3, 11, 7)]
    T = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(T - len(p), dtype=torch.long), p]) for p in prompts])
    am = torch.stack([torch.cat([torch.zeros(T - len(p)), torch.ones(len(p))]).long() for p in prompts])
    with torch.no_grad():
        logits = lm(ids, attention_mask=am)
        for i, p in enumerate(prompts):
            assert (logits[i, T - len(p):] - lm(p[None])[0]).abs().max() < 1e-4
    batched = generate(lm, ids, attention_mask=am, max_new_tokens=10)
    for i, p in enumerate(prompts):
        assert torch.equal(batched[i], generate(lm, p[None], max_new_tokens=10)[0])
