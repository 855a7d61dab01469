"""Trial (issue #19): the main job with TrainConfig overrides as JSON, one thread; e.g. python trial_config.py tie-bal 0
'{"model": {"llm": {"tie_embeddings": true}}}'. Appends to /tmp/trials/results.jsonl."""
import json, sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from cli_ref.train import TrainConfig, train, load_data
from cli_ref.vlm import VLMConfig
from cli_ref.llm import LLMConfig
from cli_ref.evaluate import evaluate
name, seed = sys.argv[1], int(sys.argv[2])
kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
mkw = kw.pop('model', {})
if 'llm' in mkw: mkw['llm'] = LLMConfig.preset('tiny', **mkw['llm'])
cfg = TrainConfig(model=VLMConfig.preset('tiny', **mkw), seed=seed, **kw)
out = Path(f'/tmp/trials/{name}-s{seed}')
t0 = time.time()
model, tok = train(cfg, out, progress=False)
t1 = time.time()
_, test, _ = load_data(cfg, train=False)
res = evaluate(model.eval(), tok, test, cfg, out=out)
rec = dict(name=name, seed=seed, kw=sys.argv[3] if len(sys.argv) > 3 else '', acc=res['accuracy'],
           families={f: v['accuracy'] for f, v in res['families'].items()}, train_s=t1 - t0, eval_s=time.time() - t1)
print(json.dumps(rec))
with open('/tmp/trials/results.jsonl', 'a') as f: f.write(json.dumps(rec) + '\n')
