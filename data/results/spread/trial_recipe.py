"""A candidate recipe, seed after seed, on the generated sets: `spread_run` (13_evaluate) with overrides, one process.
    python data/results/spread/trial_recipe.py NAME SETS SEEDS OVERRIDES
e.g. `steps3200 bars,shapes,quadrants 0,1,2 '{"instruct_steps": 3200}'` (a "model" entry overrides the tiny VLM's
config, and its "vit" entry the tower's: `'{"model": {"vit": {"pos_init": "sincos"}}}'`): records in data/results/spread/NAME/, run
folders in runs/spread-NAME/ (the sets already written under runs/spread/ are reused, not written again)."""
import sys, json, os
from pathlib import Path
from cli_ref.evaluate import spread_run
from cli_ref.vit import ViTConfig
from cli_ref.vlm import VLMConfig

name, sets, seeds, over = sys.argv[1], sys.argv[2].split(','), [int(s) for s in sys.argv[3].split(',')], json.loads(sys.argv[4])
if 'model' in over:
    m = over['model']
    if isinstance(m.get('vit'), dict): m['vit'] = ViTConfig.preset('tiny', **m['vit'])
    over['model'] = VLMConfig.preset('tiny', **m)
root = Path(f'runs/spread-{name}'); root.mkdir(parents=True, exist_ok=True)
for k in sets:
    written = Path('runs/spread') / k
    if (written / 'test.json').exists() and not (root / k).exists(): os.symlink(written.resolve(), root / k)
for k in sets:
    for s in seeds:
        r = spread_run(k, s, root, f'data/results/spread/{name}', **over)
        print(k, s, round(100 * r['accuracy'], 1), {f: round(100 * a, 1) for f, a in sorted(r['families'].items())},
              r['plateau_exit'], round(r['wall_s']), flush=True)
