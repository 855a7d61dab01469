"""The course's cross-references resolve: every "`name` (NN_notebook)" names a notebook that defines `name`, and every
relative link in the notebooks, README, RESULTS and data/README points to a file that exists."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'))
DOCS = [ROOT / 'README.md', ROOT / 'RESULTS.md', ROOT / 'data' / 'README.md', ROOT / 'CONTRIBUTING.md']
REF = re.compile(r"`([A-Za-z_][\w.]*)(?:\(\))?`[^`\n]{0,12}?\((?:from |in |see )?`?(\d\d_[a-z_]+)`?\)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown(path: Path, code: bool = True) -> str:
    "A document's text; a notebook's cells (its markdown cells only, without `code`)."
    if path.suffix != '.ipynb': return path.read_text(encoding='utf-8')
    cells = json.loads(path.read_text(encoding='utf-8'))['cells']
    return '\n'.join(''.join(c['source']) for c in cells if code or c['cell_type'] == 'markdown')


def _defines(nb: str, name: str) -> bool:
    code = '\n'.join(''.join(c['source']) for c in json.loads((ROOT / 'nbs' / f'{nb}.ipynb').read_text())['cells'] if c['cell_type'] == 'code')
    last = name.split('.')[-1]
    return re.search(rf"^\s*(?:def|class)\s+{last}\b|^{last}\s*[:=]|^\s+{last}\s*[:=]|^\s+def\s+{last}\b", code, re.M) is not None


@pytest.mark.parametrize('path', NOTEBOOKS + DOCS, ids=lambda p: p.name)
def test_every_reference_names_the_notebook_that_defines_it(path):
    wrong = [f'`{name}` ({nb})' for name, nb in REF.findall(_markdown(path))
             if not (ROOT / 'nbs' / f'{nb}.ipynb').exists() or not _defines(nb, name)]
    assert not wrong, f'{path.name}: these are not defined where the text says: {wrong}'


@pytest.mark.parametrize('path', NOTEBOOKS + DOCS, ids=lambda p: p.name)
def test_every_relative_link_exists(path):
    links = [l for l in LINK.findall(_markdown(path, code=False)) if not re.match(r'[a-z]+:', l)]
    missing = [l for l in links if not (path.parent / l).exists()]
    assert not missing, f'{path.name} links to files that do not exist: {missing}'


def test_the_checker_catches_a_wrong_reference():
    assert REF.findall("uses `attention` (from `02_vit`) and `set_attention` (01_layers)") == [('attention', '02_vit'), ('set_attention', '01_layers')]
    assert not _defines('02_vit', 'attention') and _defines('01_layers', 'attention')


def test_every_command_is_in_readme_and_the_commands_notebook():
    from cli_ref.commands import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    for doc in (ROOT / 'README.md', ROOT / 'nbs' / '14_commands.ipynb'):
        text = _markdown(doc)
        missing = [c for c in sub.choices if f'cli_ref {c}' not in text]
        assert not missing, f'{doc.name} does not show these commands: {missing}'


def test_every_results_path_data_readme_names_exists():
    text = (ROOT / 'data' / 'README.md').read_text(encoding='utf-8')
    named = re.findall(r"`(results/[^`*\s]+)`", text)
    assert len(named) >= 5 and not [p for p in named if not (ROOT / 'data' / p).exists()], named


README = ROOT / 'README.md'


def reading_minutes(nb: Path) -> float:
    "Minutes to read a notebook by README's rule: its markdown words at 200 a minute, its non-blank code lines at 15."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    words = sum(len(''.join(c['source']).split()) for c in cells if c['cell_type'] == 'markdown')
    lines = sum(1 for c in cells if c['cell_type'] == 'code' for l in ''.join(c['source']).splitlines() if l.strip())
    return words / 200 + lines / 15


def _stated_minutes() -> dict[str, int]:
    "README's start-here table: {notebook: the minutes it states}, from rows '| [NN_name](nbs/NN_name.ipynb) | m |'."
    rows = re.findall(r"^\| \[([\w]+)\]\(nbs/\1\.ipynb\) \| (\d+) \|", README.read_text(encoding='utf-8'), re.M)
    return {nb: int(m) for nb, m in rows}


def test_readme_is_at_most_1500_words():
    n = len(README.read_text(encoding='utf-8').split())
    assert n <= 1500, f'README.md has {n} words (whitespace-separated); the door holds at most 1,500: move detail to CONTRIBUTING.md or RESULTS.md'


def test_readme_links_every_numbered_notebook():
    links = set(LINK.findall(_markdown(README, code=False)))
    missing = [nb.name for nb in NOTEBOOKS if f'nbs/{nb.name}' not in links]
    assert not missing, f'README.md does not link these notebooks: {missing}'


def test_readme_names_a_total_reading_time_and_its_rule():
    text = README.read_text(encoding='utf-8')
    assert '200 words a minute' in text and '15 lines a minute' in text, 'README.md should state its reading-time rule'
    total = re.search(r"[Tt]otal reading time: ([\d,]+) minutes", text)
    assert total, "README.md should name a total reading time ('Total reading time: N minutes')"
    stated = _stated_minutes()
    assert int(total[1].replace(',', '')) == sum(stated.values()), (total[1], sum(stated.values()))


def test_contributing_exists_and_readme_links_it():
    assert (ROOT / 'CONTRIBUTING.md').exists()
    assert 'CONTRIBUTING.md' in LINK.findall(_markdown(README, code=False))


def test_readme_reading_times_follow_its_rule():
    stated = _stated_minutes()
    assert set(f'{nb.stem}' for nb in NOTEBOOKS) <= set(stated), 'every numbered notebook needs a row with its minutes'
    want = {nb: reading_minutes(ROOT / 'nbs' / f'{nb}.ipynb') for nb in stated}
    off = {nb: (stated[nb], round(want[nb], 1)) for nb in stated if abs(stated[nb] - want[nb]) > 0.2 * want[nb]}
    table = ', '.join(f'{nb} {round(m)}' for nb, m in want.items())
    assert not off, f'README states (minutes, by the rule): {off}; by the rule today: {table}'
