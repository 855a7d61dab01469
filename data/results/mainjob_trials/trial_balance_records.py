"""Trial (issue #19, 2026-11-30): the main job with rare answers of each question pattern repeated, done here by repeating the
records themselves (so the tokenizer, too, was trained on the repeated texts; train.py now repeats dataset indices instead).
Usage, from a checkout of 3b5ab72 on PYTHONPATH: python trial_balance_records.py NAME SEED POWER. Appends to /tmp/trials/results.jsonl."""
import json, sys, time, collections, torch
torch.set_num_threads(1)
from pathlib import Path
import cli_ref.train as T
from cli_ref.train import TrainConfig, train
from cli_ref.evaluate import evaluate
name, seed, power = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
orig = T.load_data
def balanced(cfg, train=True):
    tr, te, pre = orig(cfg, train)
    if not train: return tr, te, pre
    answers = {a for r in tr for _, a in r.turns}
    pat = lambda q: ' '.join('_' if w.strip('?') in answers else w for w in q.split())
    n_ga = collections.Counter((pat(r.turns[0][0]), r.turns[0][1]) for r in tr)
    top = collections.defaultdict(int)
    for (p, a), n in n_ga.items(): top[p] = max(top[p], n)
    out = []
    for r in tr:
        p = pat(r.turns[0][0]); g = (p, r.turns[0][1])
        rep = max(1, round((top[p] / n_ga[g]) ** power))
        out += [r] * rep
    print('balanced', len(tr), '->', len(out), flush=True)
    return out, te, pre
T.load_data = balanced
cfg = TrainConfig(seed=seed, **kw)
out = Path(f'/tmp/trials/{name}-s{seed}')
t0 = time.time()
model, tok = train(cfg, out, progress=False)
t1 = time.time()
_, test, _ = orig(cfg, train=False)
res = evaluate(model.eval(), tok, test, cfg, out=out)
t2 = time.time()
rec = dict(name=name, seed=seed, power=power, kw=kw, acc=res['accuracy'], families={f: v['accuracy'] for f, v in res['families'].items()},
           train_s=t1 - t0, eval_s=t2 - t1)
print(json.dumps(rec))
with open('/tmp/trials/results.jsonl', 'a') as f: f.write(json.dumps(rec) + '\n')
