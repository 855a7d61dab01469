"""Does a shorter or cheaper stage 0 teach the tower the same labels? Stage 0 of the main job (seed 0) alone, then its
own heads scored on the easy-VQA test images' shape and colour labels; one JSON line on stdout.
    python data/results/mainjob_trials/trial_stage0.py STEPS LR BATCH      (the default: 700 5e-4 64)"""
import sys, json, time, torch, numpy as np, torch.nn as nn, torch.nn.functional as F
from cli_ref.train import TrainConfig, batch_indices, lr_factor, set_seed
from cli_ref.data import easy_vqa_image_labels, image_transform
from cli_ref.vlm import VLM, VLMConfig
steps, lr, bs = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
cfg = TrainConfig(vit_steps=steps, vit_lr=lr, vit_batch_size=bs)
set_seed(0)
m = VLM(VLMConfig.preset('tiny')); vit, mc = m.vit, m.cfg.vit
tf = image_transform(mc.image_size, mc.image_mean, mc.image_std)
im, lab = easy_vqa_image_labels('train'); imt, labt = easy_vqa_image_labels('test')
px = torch.stack([tf(i) for i in im]); pxt = torch.stack([tf(i) for i in imt])
heads = nn.ModuleDict({k: nn.Linear(mc.dim, int(v.max()) + 1) for k, v in lab.items()})
opt = torch.optim.AdamW(list(vit.parameters()) + list(heads.parameters()), lr=lr, weight_decay=cfg.weight_decay, fused=True)
losses, t0 = [], time.perf_counter()
for step in range(steps):
    idx = batch_indices(len(im), step * bs, bs, cfg.seed + 1)
    for g in opt.param_groups: g['lr'] = lr * lr_factor(step, steps, cfg.warmup)
    f = vit.forward_features(px[idx])[:, mc.n_prefix:].mean(1)
    loss = sum(F.cross_entropy(h(f), torch.as_tensor(lab[k][idx]), ignore_index=-1) for k, h in heads.items())
    opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
t = time.perf_counter() - t0
with torch.no_grad():
    f = torch.cat([vit.forward_features(pxt[s:s+500])[:, mc.n_prefix:].mean(1) for s in range(0, len(pxt), 500)])
    acc = {k: float(((h(f).argmax(1).numpy() == labt[k]) | (labt[k] < 0)).sum() - (labt[k] < 0).sum()) / float((labt[k] >= 0).sum()) for k, h in heads.items()}
print(json.dumps(dict(steps=steps, lr=lr, bs=bs, final_loss=float(np.mean(losses[-20:])), test_acc=acc, s=t)), flush=True)
