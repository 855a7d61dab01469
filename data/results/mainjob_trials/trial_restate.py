"""Trial (issue #19): the main job with a 'restate' auxiliary family: a fraction `p` of the training questions that name
exactly one answer word (e.g. 'is there a red shape?') also enter as '<q> what does it name?' -> 'red'.
Usage: python trial_restate.py NAME SEED P [TrainConfig overrides as JSON; "template_tok": true trains the BPE on the
templated texts]. One thread. Appends to /tmp/trials/results.jsonl. Run on 43b0f1f (before `restate` was in the package;
the package's `restate_records` builds the same records)."""
import json, sys, time, random, dataclasses, torch
torch.set_num_threads(1)
from pathlib import Path
import cli_ref.train as T
from cli_ref.train import TrainConfig, train, load_data
from cli_ref.evaluate import evaluate
name, seed, p = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
if kw.pop('template_tok', False):  # the BPE trained on the texts as the chat template writes them ('USER:' one token)
    _bt = T.build_tokenizer
    T.build_tokenizer = lambda recs, v, template=None: _bt(recs, v, template='tiny')
_load = T.load_data
def load_with_restate(cfg, train=True):
    tr, te, pre = _load(cfg, train)
    if not train: return tr, te, pre
    answers = {a.lower() for r in tr for _, a in r.turns}
    rng, extra = random.Random(cfg.seed), []
    for r in tr:
        q, a = r.turns[-1]
        named = [w.strip('?.,!').lower() for w in q.split() if w.strip('?.,!').lower() in answers]
        if len(named) == 1 and rng.random() < p:
            extra.append(dataclasses.replace(r, id=r.id + '-restate', turns=[(q + ' what does it name?', named[0])], family='restate'))
    print(f'{len(extra)} restate records added to {len(tr)}')
    return tr + extra, te, pre
T.load_data = load_with_restate
cfg = TrainConfig(seed=seed, **kw)
out = Path(f'/tmp/trials/{name}-s{seed}')
t0 = time.time()
model, tok = train(cfg, out, progress=False)
t1 = time.time()
_, test, _ = _load(cfg, train=False)
res = evaluate(model.eval(), tok, test, cfg, out=out)
rec = dict(name=name, seed=seed, p=p, kw=kw, acc=res['accuracy'],
           families={f: v['accuracy'] for f, v in res['families'].items()}, train_s=t1 - t0, eval_s=time.time() - t1)
print(json.dumps(rec))
with open('/tmp/trials/results.jsonl', 'a') as f: f.write(json.dumps(rec) + '\n')
