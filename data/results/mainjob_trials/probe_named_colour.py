"""Issue #19: what is linearly readable at the answer position (the last prompt token) of a trained main job, for
easy-VQA's test questions that name a colour ("is there a red shape?", "is there not a blue shape?"): the colour the
question names, the image's colour, and whether they match. Logistic-regression probes (`probe_accuracy`,
15_experiment) on the final hidden state, fitted on two thirds of the questions and scored on the rest. Chance: 12.5%
for a colour; for "match" a linear probe cannot beat the base rate (87.4% "no match") unless the model has computed
the comparison itself. Usage: python probe_named_colour.py RUN_DIR [RUN_DIR ...]"""
import json, re, sys, torch
from cli_ref.data import load_easy_vqa
from cli_ref.evaluate import load_run, prompt_batches
from cli_ref.experiment import probe_accuracy
COLOURS = ['red', 'green', 'blue', 'black', 'gray', 'teal', 'brown', 'yellow']
colour_in = lambda q: next((i for i, c in enumerate(COLOURS) if re.search(rf'\b{c}\b', q)), None)
test = load_easy_vqa('test')
image_colour = {r.image: COLOURS.index(r.turns[0][1]) for r in test if r.family == 'color'}
recs = [r for r in test if r.turns[0][1] in ('yes', 'no') and r.image in image_colour and colour_in(r.turns[0][0]) is not None]
named = torch.tensor([colour_in(r.turns[0][0]) for r in recs])
image = torch.tensor([image_colour[r.image] for r in recs])
targets = dict(named=named, image=image, match=(named == image).long())
for run in sys.argv[1:]:
    model, tok, tcfg = load_run(run, 'cpu')
    hs = []
    with torch.no_grad():
        for b in prompt_batches(model, tok, recs, tcfg, batch_size=256, cache=True):
            tokens, banks, bank_mask = model.project_features(b['features'])
            x, vis = model.embed(b['input_ids'], tokens)
            state = model.injector.prepare(banks, bank_mask, vis)
            h = model.llm.hidden(inputs_embeds=x, attention_mask=b['attention_mask'], inject=model.injector.hook(state))
            hs.append(h[:, -1])  # left-padded: the last position is where the answer is predicted
    h, n = torch.cat(hs), len(recs) * 2 // 3
    print(json.dumps(dict(run=run, n_scored=len(recs) - n, **{k: round(probe_accuracy(h[:n], y[:n], h[n:], y[n:]), 3)
                                                             for k, y in targets.items()})))
