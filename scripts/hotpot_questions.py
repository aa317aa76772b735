# One-off: HotpotQA's 400 dev questions as QA data, each with its two gold paragraphs only
# (the supporting facts' titles, in the file's order), for a QA stage before the seed's 450.
import json, random, sys
out_file = sys.argv[1]
rows = [json.loads(l) for l in open('../shared/data/hotpotqa_dev.jsonl', encoding='utf-8')]
out = []
for r in rows:
    gold = {t for t, _ in r['supporting_facts']}
    docs = [{'title': t, 'text': ''.join(s).strip()} for t, s in r['context'] if t in gold]
    if len(docs) >= 1 and r['answer'].strip():
        out.append({'id': str(r['id']), 'dataset': 'hotpot_qa', 'question': r['question'],
                    'documents': docs, 'answers': [r['answer']]})
random.Random(5).shuffle(out)
json.dump(out, open(out_file, 'w'))
print(len(out), 'questions', sum(len(e['documents']) for e in out) / len(out), 'documents each')
