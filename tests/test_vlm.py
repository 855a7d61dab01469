"CLI's properties for every variant: zero-init, causality, cache equality, padding, gradients; and the gate opens."
import pytest
import torch
from torch import nn

from cli_ref.llm import LLMConfig
from cli_ref.tokenizer import IGNORE_INDEX
from cli_ref.vit import ViTConfig
from cli_ref.injectors import VARIANTS
from cli_ref.vlm import (VLM, VLMConfig, added_params, causal_lm_loss, load_shared,
                         param_groups, perturb_zero_init)

def small_cfg(variant, **kw):
    return VLMConfig(vit=ViTConfig(image_size=32, patch_size=8, dim=48, depth=4, n_heads=4, mlp_dim=96),
                     llm=LLMConfig(vocab_size=64, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=128),
                     variant=variant, lora_rank=4, agf_heads=4, **kw)

N = 16  # image tokens at 32x32 / patch 8

def sample(text_len, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.tensor([1]), torch.full((N,), 3), torch.randint(4, 64, (text_len,), generator=g)])
    return torch.randn(3, 32, 32, generator=g), ids

@pytest.fixture(scope='module', params=VARIANTS)
def model(request):
    torch.manual_seed(0)
    return perturb_zero_init(VLM(small_cfg(request.param)), std=0.1).eval()

def test_zero_init_equals_baseline():
    torch.manual_seed(0)
    base = VLM(small_cfg('baseline')).eval()
    px, ids = sample(7, 0)
    for v in ('static', 'cli', 'cli-last'):
        for kw in ({}, {'lora_on': 'both'}, {'share_kv': False}, {'inject_every': 1}):
            m = load_shared(VLM(small_cfg(v, **kw)), base).eval()
            with torch.no_grad(): assert torch.equal(m(px[None], ids[None]), base(px[None], ids[None])), (v, kw)
    # and the comparison is not vacuous: once AGF's output projection moves, the logits move
    m = perturb_zero_init(load_shared(VLM(small_cfg('cli')), base)).eval()
    with torch.no_grad(): assert not torch.allclose(m(px[None], ids[None]), base(px[None], ids[None]), atol=1e-4)

def test_causality(model):
    px, ids = sample(10, 1)
    with torch.no_grad():
        out = model(px[None], ids[None])
        for t in (N + 3, N + 8):
            ch = ids.clone(); ch[t] = (ch[t] + 5) % 60 + 4
            out2 = model(px[None], ch[None])
            assert torch.allclose(out2[:, :t], out[:, :t], atol=1e-5)
            assert not torch.allclose(out2[:, t], out[:, t])

def test_cache_equals_recompute(model):
    px, ids = sample(5, 2)
    px, ids = torch.stack([px, sample(5, 3)[0]]), torch.stack([ids, sample(5, 3)[1]])
    a = model.generate(px, ids, max_new_tokens=8)
    assert torch.equal(a, model.generate(px, ids, max_new_tokens=8, use_cache=False))
    assert torch.equal(a, model.generate(px, ids, max_new_tokens=8, recompute_memory=True))

def test_padded_batch_equals_alone(model):
    samples = [sample(n, 10 + n) for n in (2, 9, 5)]
    T = max(len(i) for _, i in samples)
    ids = torch.stack([torch.cat([torch.zeros(T - len(i), dtype=torch.long), i]) for _, i in samples])
    am = torch.stack([torch.cat([torch.zeros(T - len(i)), torch.ones(len(i))]).long() for _, i in samples])
    px = torch.stack([p for p, _ in samples])
    with torch.no_grad():
        logits = model(px, ids, attention_mask=am)
        for b, (p, i) in enumerate(samples):
            assert (logits[b, T - len(i):] - model(p[None], i[None])[0]).abs().max() < 1e-4
    gen = model.generate(px, ids, attention_mask=am, max_new_tokens=6)
    for b, (p, i) in enumerate(samples):
        assert torch.equal(gen[b], model.generate(p[None], i[None], max_new_tokens=6)[0])

def test_matmul_attention_equals_sdpa(model):
    "The two attention kernels are one function: every variant gives the same logits (padded batch) and tokens."
    from cli_ref.layers import use_attention
    samples = [sample(n, 20 + n) for n in (3, 8)]
    T = max(len(i) for _, i in samples)
    ids = torch.stack([torch.cat([torch.zeros(T - len(i), dtype=torch.long), i]) for _, i in samples])
    am = (ids != 0).long(); am[:, -8:] = 1
    px = torch.stack([p for p, _ in samples])
    out = {}
    for impl in ('sdpa', 'matmul'):
        with use_attention(model, impl), torch.no_grad():
            out[impl] = (model(px, ids, attention_mask=am) * am[..., None], model.generate(px, ids, attention_mask=am, max_new_tokens=6))
    assert (out['sdpa'][0] - out['matmul'][0]).abs().max() < 1e-4
    assert torch.equal(out['sdpa'][1], out['matmul'][1])

def test_gradients_reach_every_trainable_parameter(model):
    px, ids = sample(6, 4)
    labels = ids.clone(); labels[:N + 1] = IGNORE_INDEX
    model.zero_grad()
    with torch.enable_grad(): causal_lm_loss(model(px[None], ids[None]), labels[None]).backward()
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [names[id(p)] for ps in param_groups(model).values() for p in ps if p.grad is None or not p.grad.any()]
    assert not missing

def test_wrong_number_of_image_tokens():
    m = VLM(small_cfg('cli'))
    px, ids = sample(4, 0)
    with pytest.raises(ValueError, match='have \\[5\\] image placeholder tokens; expected 0 or 16'):
        m(px[None], torch.cat([torch.full((5,), 3), ids[N + 1:]])[None])

def test_parameter_accounting():
    t = added_params('tiny')
    assert t['baseline'] == (0, 0.0) and t['cli'][0] > t['deepstack'][0] > 0
    big = added_params('llava15_7b', variants=('cli',))  # built on the meta device: no memory
    assert 0 < big['cli'][1] < 0.05

class ConstantBlock(nn.Module):
    "Replaces the tower's last block: its output no longer depends on the image."
    def __init__(self, dim):
        super().__init__()
        self.c = nn.Parameter(torch.randn(dim))
    def forward(self, x): return torch.zeros_like(x) + self.c

COLORS = torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])

def colour_batch(B, g):
    y = torch.randint(0, 4, (B,), generator=g)
    px = COLORS[y][:, :, None, None] + 0.3 * torch.randn(B, 3, 32, 32, generator=g)
    ids = torch.cat([torch.full((B, 1), 1), torch.full((B, N), 3), torch.full((B, 1), 4), (5 + y)[:, None]], 1)
    labels = torch.full_like(ids, IGNORE_INDEX); labels[:, -1] = 5 + y
    return px, ids, labels, y

def train_colour_task(variant, steps=120):
    "The answer is only in early vision layers: the baseline's layer (the last) is made input-independent."
    torch.manual_seed(0)
    m = VLM(small_cfg(variant, feature_layer=-1, vision_layers=(0, 1)))
    m.vit.blocks[-1] = ConstantBlock(48)
    groups = param_groups(m)
    opt = torch.optim.AdamW([{'params': groups['projector'] + groups['llm'], 'lr': 2e-3},
                             {'params': groups['amp'] + groups['agf'], 'lr': 5e-3}])  # vision frozen
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        px, ids, labels, _ = colour_batch(32, g)
        loss = causal_lm_loss(m(px, ids), labels)
        opt.zero_grad(); loss.backward(); opt.step()
    px, ids, _, y = colour_batch(256, torch.Generator().manual_seed(1))
    m.eval()
    with torch.no_grad(): logits, gates = m(px, ids[:, :-1], return_gates=True)
    return (logits[:, -1].argmax(-1) - 5 == y).float().mean().item(), gates, m

def test_gate_opens_where_only_early_layers_know():
    acc_base, _, _ = train_colour_task('baseline')
    acc_cli, gates, m = train_colour_task('cli')
    assert acc_base < 0.45, acc_base                  # chance is 0.25: the last layer carries nothing
    assert acc_cli > 0.9, acc_cli
    assert any(a.o_proj.weight.abs().max() > 1e-2 for a in m.injector.agf.values())  # the injection opened from exactly zero
    # the layer choice learned to ignore the bank fed by the input-independent last layer (uniform would be 1/3)
    assert all(e['alpha'][:, -1].mean() < 0.1 for e in gates)
