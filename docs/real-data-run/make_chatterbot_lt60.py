"""A real, long-tailed text classification set from text shipped in a PyPI package (chatterbot-corpus):
each (language, topic) file is a class, each conversation line a document. The 60 largest classes are
cut to a Zipf profile (the largest kept whole, the rank-r class to 1/1000^(r/59) of it, at least 2),
as long-tailed benchmarks such as CIFAR-LT are made. Writes chatterbot_lt60.csv (text, label).

    python docs/real-data-run/make_chatterbot_lt60.py OUT.csv
    rarekit demo --data OUT.csv --text-col text --label-col label --out DIR
"""
import collections
import csv
import glob
import os
import random
import sys

import chatterbot_corpus
import yaml

CLASSES, IMBALANCE = 60, 1000


def main(out: str) -> None:
    root = os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data")
    documents = collections.defaultdict(list)
    for path in sorted(glob.glob(f"{root}/*/*.yml")):
        label = f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)[:-4]}"
        try:
            data = yaml.safe_load(open(path, encoding="utf-8"))
        except yaml.YAMLError:
            continue  # a few files of the corpus do not parse
        for conversation in data.get("conversations") or []:
            documents[label] += [line.strip() for line in conversation if isinstance(line, str) and line.strip()]
    ranked = sorted(documents, key=lambda label: -len(documents[label]))[:CLASSES]
    rng = random.Random(0)
    largest = len(documents[ranked[0]])
    rows = []
    for rank, label in enumerate(ranked):
        keep = max(2, round(largest * (1 / IMBALANCE) ** (rank / (CLASSES - 1))))
        texts = documents[label]
        rng.shuffle(texts)
        rows += [(text, label) for text in texts[:keep]]
    rng.shuffle(rows)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"{out}: {len(rows)} documents, {len(ranked)} classes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "chatterbot_lt60.csv")
