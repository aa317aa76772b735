# One-off: N SQuAD dev questions that neither the train file nor the held-out files hold,
# from articles that no held-out file uses, appended to the train file's questions.
import json, random, sys
train_file, out_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
train = json.load(open(train_file))
held = json.load(open('data/squad500_eval.json')) + json.load(open('data/heldout200.json'))
held_articles = {d['title'] for e in held for d in e['documents']}
seen = {e['id'] for e in train + held}
rows = [json.loads(l) for l in open('../shared/data/squad_dev.jsonl', encoding='utf-8')]
rows = [r for r in rows if r['title'] not in held_articles and r['id'] not in seen]
random.Random(3).shuffle(rows)
extra = [{'id': r['id'], 'dataset': 'squad', 'question': r['question'],
          'documents': [{'title': r['title'], 'text': r['context']}], 'answers': r['answers']}
         for r in rows[:n]]
out = train + extra
random.Random(4).shuffle(out)
json.dump(out, open(out_file, 'w'))
print(len(out), len({d['title'] for e in out for d in e['documents']}), 'articles', len(rows), 'available')
