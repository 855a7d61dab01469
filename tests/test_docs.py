"""The course's cross-references resolve: every "`name` (NN_notebook)" names a notebook that defines `name`, and every
relative link in the notebooks, README, RESULTS and data/README points to a file that exists."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'))
DOCS = [ROOT / 'README.md', ROOT / 'RESULTS.md', ROOT / 'data' / 'README.md']
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
