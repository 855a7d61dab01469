"`cli_ref bench --gpu-report`: the one command a lent GPU runs, tested on the CPU in its quick mode."
import json, subprocess

from test_train import CLI, ENV

def test_gpu_report_quick_writes_every_part(tmp_path):
    r = subprocess.run([CLI, 'bench', '--gpu-report', str(tmp_path), '--quick'], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-800:]
    rec = json.loads((tmp_path / 'gpu_report.json').read_text())
    assert {'device', 'torch'} <= set(rec['machine']) and rec['commit'] is not None and rec['quick'] is True
    assert list(rec['parts']) == ['main_job', 'real_size', 'steps']
    assert [k for k, v in rec['parts'].items() if 'error' in v] == [], rec['parts']
    job = rec['parts']['main_job']
    assert 0 <= job['accuracy'] <= 1 and {'color', 'shape', 'yes/no'} <= set(job['families']) and job['wall_s'] > 0
    rows = rec['parts']['real_size']['runs'][0]['rows']
    assert [(r['train'], r['gradient_checkpointing']) for r in rows] == [('cli', False), ('cli', True), ('cli+llm', False), ('cli+llm', True)]
    assert all({'plan_gb', 'ours_over_hf', 'tokens_per_s'} <= set(r) for r in rows)
    assert 'tiny' in json.dumps(rec['parts']['steps']['train'])
    assert 'main job:' in r.stdout and 'quick: not a measurement' in r.stdout
