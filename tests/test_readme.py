"""The README's worked example runs as written: its commands, in a fresh folder, one after another."""
import os, re, shlex, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worked_example() -> list[str]:
    "The commands of the first bash block after 'A worked example, offline.' (continuation lines joined)."
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    block = re.search(r"\*\*A worked example, offline\.\*\*.*?```bash\n(.*?)```", text, re.S)[1]
    return [c.strip() for c in block.replace('\\\n', ' ').splitlines() if c.strip()]


def test_worked_example_runs_as_written(tmp_path):
    cmds = _worked_example()
    assert len(cmds) == 3 and cmds[1].startswith('cli_ref train') and cmds[2].startswith('cli_ref eval')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    outs = [subprocess.run(shlex.split(c), cwd=tmp_path, env=env, capture_output=True, text=True) for c in cmds]
    for c, r in zip(cmds, outs): assert r.returncode == 0, (c, r.stderr[-800:])
    assert 'test accuracy' in outs[1].stdout
    first = outs[2].stdout.splitlines()[0]
    assert first == 'scoring every record of runs/toy/test.json: 12 records' and '(n=12)' in outs[2].stdout, outs[2].stdout
