"""Why the quadrants set's `quadrant_color` spreads over seeds: three looks at the five finished runs.
    python data/results/spread/diagnose_place.py RUNS [SEEDS] [OUT]
RUNS holds the set (`quadrants/`, as `spread_run` writes it) and the runs `quadrants-s<seed>/` (checkpoint, eval.json);
writes OUT (default data/results/spread/place_diagnostics.json):
- errors: of the wrong `quadrant_color` answers, how many name the colour of another object in the image;
- position share: the share of a token's feature variance that its place explains (the variance of the per-place
  means over all tokens' variance), at every layer the model reads;
- position probe: a linear probe (L-BFGS, 3/4 of the tokens to fit, 1/4 to score) reading a pooled image token's place
  (one of 16) from the frozen tower's features, at every layer the model reads;
- gates: AGF's mean weight over the vision layers (alpha) and its strength g on the first answer token, per injection
  layer, over 40 test questions."""
import sys, json
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from PIL import Image
from cli_ref.core import write_json
from cli_ref.data import load_llava_json, image_transform, quadrant_scene, quadrant_questions, _split_seed
from cli_ref.evaluate import load_run, ask

def test_scenes(n: int) -> list[list[dict]]:
    "The objects of the test images, regenerated as `write_llava_set('quadrants')` drew them."
    rng, out = np.random.default_rng(_split_seed('test', 0)), []
    for _ in range(n):
        objs = quadrant_scene(rng); quadrant_questions(objs, rng); out.append(objs)
    return out

def probe_accuracy(X: torch.Tensor, y: torch.Tensor, n_cls: int) -> float:
    "A linear probe's held-out accuracy (standardised features, small L2)."
    n = int(len(X) * 0.75)
    X = (X - X[:n].mean(0)) / (X[:n].std(0) + 1e-6)
    W, b = torch.zeros(X.shape[1], n_cls, requires_grad=True), torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300)
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(X[:n] @ W + b, y[:n]) + 1e-3 * W.pow(2).sum(); loss.backward(); return loss
    opt.step(closure)
    return ((X[n:] @ W + b).argmax(1) == y[n:]).float().mean().item()

def diagnose(runs: Path, seed: int, scenes, train_recs, test_recs) -> dict:
    model, tok, cfg = load_run(runs / f'quadrants-s{seed}', device='cpu')
    answers = json.loads((runs / f'quadrants-s{seed}' / 'eval.json').read_text())['answers']
    qc = [(i, r) for i, r in enumerate(r for r in test_recs if r.family == 'quadrant_color')]
    wrong = [(i, answers[r.id]) for i, r in qc if answers[r.id] != r.turns[0][1]]
    v = model.cfg.vit
    T = image_transform(v.image_size, v.image_mean, v.image_std)
    with torch.no_grad():
        feats = model.vision_features(torch.stack([T(Image.open(r.image).convert('RGB')) for r in train_recs]))
    probe, share = {}, {}
    for k, f in feats.items():
        B, N, D = f.shape
        probe[k] = probe_accuracy(f.reshape(B * N, D), torch.arange(N).repeat(B), N)
        mean = f.mean((0, 1))
        share[k] = ((f.mean(0) - mean).pow(2).sum(-1).mean() / (f - mean).pow(2).sum(-1).mean()).item()
    alpha, g = [], []
    for _, r in qc[:40]:
        o = ask(model, tok, r.image, r.turns[0][0], cfg)
        if 'alpha' in o: alpha.append(o['alpha']); g.append([row[0] for row in o['g']])
    return dict(seed=seed, variant=model.cfg.variant, quadrant_color=1 - len(wrong) / len(qc), wrong=len(wrong),
                wrong_colour_in_image=sum(p in [o['color'] for o in scenes[i]] for i, p in wrong),
                position_share={str(k): a for k, a in share.items()}, position_probe={str(k): a for k, a in probe.items()},
                alpha=np.mean(alpha, 0).tolist() if alpha else None, g_first_answer_token=np.mean(g, 0).tolist() if g else None)

if __name__ == '__main__':
    torch.set_num_threads(1); torch.manual_seed(0)
    runs = Path(sys.argv[1])
    seeds = [int(s) for s in sys.argv[2].split(',')] if len(sys.argv) > 2 else list(range(5))
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path('data/results/spread/place_diagnostics.json')
    test_recs = load_llava_json(runs / 'quadrants' / 'test.json', runs / 'quadrants' / 'images')
    train_recs = [r for r in load_llava_json(runs / 'quadrants' / 'train.json', runs / 'quadrants' / 'images') if r.family == 'count'][:1200]
    scenes = test_scenes(len(test_recs) // 3)
    res = []
    for s in seeds:
        res.append(diagnose(runs, s, scenes, train_recs, test_recs))
        print(json.dumps(res[-1]), flush=True)
    write_json(out, dict(runs=str(runs), records=res))
