"""Which lever makes the tiny ViT read a glyph sooner? Short trials on glyph scenes alone (every object a glyph).

    python data/results/tower/glyph_levers.py MODE LR STEPS    (one thread; prints a JSON line every 100 steps)

MODE: 'mean' (the quadrant-mean head of 19_tower), 'token' (every token of a quadrant names its glyph), with any of
'-big' (glyphs printed at 28-36 px instead of 18-28), '-snapJ' (each glyph at its quadrant's centre +- J px, on the
patch grid, instead of anywhere in it), '-digits' (ten digits instead of 34 glyphs). Accuracy: the glyph quadrants
of 400 held-out scenes. Results: glyph_levers.jsonl beside this file."""
import sys, time, json, numpy as np, torch, torch.nn.functional as F
from torch import nn
torch.set_num_threads(1)
from cli_ref.data import glyph_scene, glyph_scene_labels, draw_scene, GLYPHS
from cli_ref.tower import quadrant_means
from cli_ref.vit import ViTConfig, VisionTransformer
from cli_ref.experiment import pixels
from cli_ref.train import lr_factor
mode, lr, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
import cli_ref.data as D
if 'big' in mode: D.sample_glyph.__defaults__ = ((28, 36), 20)
digits = 'digits' in mode
cfg = ViTConfig.preset('tiny'); torch.manual_seed(0)
vit = VisionTransformer(cfg); head = nn.Linear(cfg.dim, 4 + len(GLYPHS))
opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
def batch(rng, n):
    sc = [glyph_scene(rng, p_glyph=1.0) for _ in range(n)]
    if 'snap' in mode:
        j = float(mode.split('snap')[1][:1])
        for s_ in sc:
            for o in s_:
                q = o['quadrant']; o['x'] = (q % 2) * 32 + 16 + rng.uniform(-j, j); o['y'] = (q // 2) * 32 + 16 + rng.uniform(-j, j)
    if digits:
        for s in sc:
            for o in s: o['glyph'] = str(rng.choice(list('0123456789')))
    return pixels(np.stack([draw_scene(s) for s in sc]), cfg), torch.tensor([glyph_scene_labels(s)['content'] for s in sc])
te_x, te_y = batch(np.random.default_rng(99), 400)
def logits(x):
    t = vit.forward_features(x)[:, cfg.n_prefix:]
    if mode.startswith('token'):
        B, T, D = t.shape; g = int(T ** .5)
        return head(t).reshape(B, 2, g // 2, 2, g // 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, 4, T // 4, -1)   # (B,4,16,C)
    return head(quadrant_means(t))[:, :, None]
t0 = time.time(); rng = np.random.default_rng(0)
for step in range(steps + 1):
    if step % 100 == 0:
        with torch.no_grad():
            z = logits(te_x).mean(2); m = te_y >= 4
            acc = (z.argmax(-1)[m] == te_y[m]).float().mean().item()
        print(json.dumps(dict(mode=mode, lr=lr, step=step, glyph_acc=round(acc, 4), t=round(time.time() - t0))), flush=True)
    if step == steps: break
    x, y = batch(rng, 64)
    for g in opt.param_groups: g['lr'] = lr * lr_factor(step, steps, 0.05)
    z = logits(x)
    loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), y[:, :, None].expand(-1, -1, z.shape[2]).reshape(-1))
    opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(list(vit.parameters()) + list(head.parameters()), 1.0); opt.step()
