#!/usr/bin/env python3
"""More held-out questions for a steadier QA figure than the 50 of a 500-example split.

Writes N questions of the eval file's articles (from the SQuAD dev rows of ../shared/data)
that neither the training nor the eval file holds, shuffled with a fixed seed, in the
prepared format that `scaledown eval --eval-data` reads:

    python3 scripts/heldout_questions.py data/squad500.json data/squad500_eval.json \
        ../shared/data/squad_dev.jsonl 200 data/heldout200.json
"""
import json
import random
import sys


def main(train_file, eval_file, squad_jsonl, n, out_file):
    train = json.load(open(train_file))
    held = json.load(open(eval_file))
    articles = {d["title"] for e in held for d in e["documents"]}
    seen = {e["id"] for e in train + held}
    if articles & {d["title"] for e in train for d in e["documents"]}:
        sys.exit(f"{eval_file} shares articles with {train_file}: not a held-out split")
    rows = [json.loads(line) for line in open(squad_jsonl, encoding="utf-8")]
    rows = [r for r in rows if r["title"] in articles and r["id"] not in seen]
    random.Random(1).shuffle(rows)
    out = [
        {
            "id": r["id"],
            "dataset": "squad",
            "question": r["question"],
            "documents": [{"title": r["title"], "text": r["context"]}],
            "answers": r["answers"],
        }
        for r in rows[:n]
    ]
    json.dump(out, open(out_file, "w"))
    print(f"wrote {out_file}: {len(out)} questions of {len(articles)} held-out articles")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
