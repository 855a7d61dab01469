"""Trial (issue #19, fourth session): the instruct stage only, from the stage-0 tower of a finished main-job run of the
same seed (its last checkpoint holds the tower as stage 0 left it: the tower is frozen after). The LLM, projector, AMP
and AGF start from the same seeded initialisation as in `cli_ref train`, and the batches are the same, so with the
defaults this replays the main job's instruct stage (checked against a recorded log before use).
Usage: python trial_instruct.py NAME SEED TOWER_RUN_DIR [TrainConfig overrides as JSON, plus "schedule": "cosine" |
"wsd:F" (warmup, then the peak learning rate held until the last F of the stage, then linear decay to 10%)]
Threads: $THREADS (default 1). Appends to $TRIALS/results.jsonl (default /tmp/t5)."""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ.get('THREADS', 1)))
from pathlib import Path
from safetensors.torch import load_file
import cli_ref.train as T
from cli_ref.evaluate import evaluate

name, seed, tower_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
schedule = kw.pop('schedule', 'cosine')
if schedule.startswith('wsd:'):
    tail = float(schedule[4:])
    def wsd(step, total, warmup):
        w, d = max(1, int(total * warmup)), int(total * (1 - tail))
        if step < w: return (step + 1) / w
        if step < d: return 1.0
        return 1.0 - 0.9 * (step - d) / max(1, total - d)
    T.lr_factor = wsd
trials = Path(os.environ.get('TRIALS', '/tmp/t5'))
cfg = T.TrainConfig(seed=seed, **kw)
out = trials / f'{name}-s{seed}'
t0 = time.time()
run = T.prepare_run(cfg, out, progress=False)
ckpt = max(tower_dir.glob('ckpt-*'))
vit = {k[4:]: v for k, v in load_file(ckpt / 'model.safetensors').items() if k.startswith('vit.')}
run.model.vit.load_state_dict(vit)
run.step = cfg.vit_steps
bar = T.tqdm(disable=True)
cache = T.cache_features(run, bar)
T.lm_stage(run, cfg.stages()[-1], 0, cache, bar)
t1 = time.time()
_, test, _ = T.load_data(cfg, train=False)
res = evaluate(run.model.eval(), run.tok, test, cfg, out=out)
log = [json.loads(l) for l in open(out / 'log.jsonl')]
curve = [round(sum(r['loss'] for r in log if a < r['step'] - cfg.vit_steps <= a + 100) / 10, 3)
         for a in range(0, cfg.instruct_steps, 100)]
rec = dict(name=name, seed=seed, schedule=schedule, kw=kw, tower=str(ckpt), acc=round(res['accuracy'], 4),
           families={f: round(v['accuracy'], 4) for f, v in res['families'].items()}, loss_per_100=curve,
           instruct_s=round(t1 - t0, 1), threads=torch.get_num_threads())
print(json.dumps(rec))
with open(trials / 'results.jsonl', 'a') as f: f.write(json.dumps(rec) + '\n')
