"""Normalizes a raw TEXT_INTENT upload (`utterance,label` rows, no header, labels joined by `;`)
into the snapshot format data-management writes: `examples.csv` rows `"<utterance>","<id>"`
and `labels.csv` rows `"<id>","<label>"`, every field double-quoted, ids 1-based in order of
first appearance.

Usage: normalize.py RAW.csv OUT_DIR
"""

import csv
import os
import sys


def quote(field):
    return '"' + field.replace('"', '""') + '"'


def main(raw, out_dir):
    ids = {}
    rows = []
    with open(raw, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2 or not row[0] or not row[1]:
                sys.exit(f"{raw} line {line}: expected utterance,label")
            label_ids = []
            for label in row[1].split(";"):
                label_ids.append(ids.setdefault(label, len(ids) + 1))
            rows.append((row[0], ";".join(str(i) for i in label_ids)))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "examples.csv"), "w", encoding="utf-8") as f:
        for text, label_ids in rows:
            f.write(f"{quote(text)},{quote(label_ids)}\n")
    with open(os.path.join(out_dir, "labels.csv"), "w", encoding="utf-8") as f:
        for label, i in ids.items():
            f.write(f"{quote(str(i))},{quote(label)}\n")
    print(f"{raw}: {len(rows)} examples, {len(ids)} labels -> {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
