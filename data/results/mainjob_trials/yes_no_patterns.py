"""Accuracy of a run's eval.json on easy-VQA's yes/no questions by pattern: colour or shape named, negated or not, true answer.
Usage: python yes_no_patterns.py RUN_DIR [RUN_DIR ...]"""
import json, re, collections, sys
from cli_ref.data import load_easy_vqa
te = load_easy_vqa('test')
for run in sys.argv[1:]:
    e=json.load(open(f'{run}/eval.json'))['answers']
    byattr=collections.defaultdict(lambda:[0,0])
    for r in te:
        q,a=r.turns[0]
        if a not in ('yes','no'): continue
        t=re.sub(r'\b(red|green|blue|black|gray|teal|brown|yellow)\b','C',q)
        t=re.sub(r'\b(circle|rectangle|triangle)\b','S',t)
        neg = ' not ' in t or ' no ' in t
        kind = ('colour' if 'C' in t else 'shape', 'neg' if neg else 'pos')
        ok = e[r.id]==a
        byattr[(kind,a)][0]+=ok; byattr[(kind,a)][1]+=1
    print(run, ' '.join(f"{k[0][0]}/{k[0][1]}/{k[1]}:{c/n:.2f}" for k,(c,n) in sorted(byattr.items())))
