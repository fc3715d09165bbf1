#!/usr/bin/env python3
"""ffm_convert.py — one Criteo-shaped TSV (label, I1..I13, C1..C26) into the
same 39 one-hot fields for libffm/xLearn and for embstore, for
bench/ffm_parity.sh.

    ffm_convert.py IN.tsv N_TRAIN OUTDIR

The first N_TRAIN rows (file order) are the training rows, the rest the
test rows.  Writes OUTDIR/{train,test}.ffm (libffm text: "label
field:index:1 ..." with one feature per field, indices dense per data set,
training features first so that a test-only feature gets an index libffm's
model does not have and ignores) and OUTDIR/{train,test}.csv (a header
"label,I1..I13,C1..C26" and one token per field; every column is read by
embstore as `cat`) and OUTDIR/columns.txt (the --columns spec).

Features, identical in both files:
  - C1..C26: the token itself; empty -> "NA" (its own value, so every row
    has exactly 39 one-hot features and libffm's norm is 39 for every row);
  - I1..I13: bucketized into categories, the Criteo-competition trick:
    x > 2 -> "b" + floor(log(x)^2), else the integer itself ("-1", "0",
    "1", "2"); empty -> "NA".
No real-valued inputs reach either tool.
"""
import math
import sys


def num_token(s):
    if s == "":
        return "NA"
    x = float(s)
    if x > 2:
        return "b%d" % int(math.floor(math.log(x) ** 2))
    return "%d" % int(x)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, n_train, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    names = ["I%d" % i for i in range(1, 14)] + ["C%d" % i for i in range(1, 27)]
    index = {}
    files = {}
    for part in ("train", "test"):
        files[part + ".ffm"] = open("%s/%s.ffm" % (out, part), "w")
        files[part + ".csv"] = open("%s/%s.csv" % (out, part), "w")
        files[part + ".csv"].write("label," + ",".join(names) + "\n")
    with open(src) as f:
        for i, line in enumerate(f):
            col = line.rstrip("\n").split("\t")
            if len(col) != 40:
                sys.exit("%s:%d: %d columns, expected 40" % (src, i + 1, len(col)))
            part = "train" if i < n_train else "test"
            toks = [num_token(c) for c in col[1:14]] + [c if c != "" else "NA" for c in col[14:]]
            feats = []
            for fld, t in enumerate(toks):
                key = (fld, t)
                j = index.get(key)
                if j is None:
                    j = index[key] = len(index)
                feats.append("%d:%d:1" % (fld, j))
            files[part + ".ffm"].write(col[0] + " " + " ".join(feats) + "\n")
            files[part + ".csv"].write(col[0] + "," + ",".join(toks) + "\n")
    for fh in files.values():
        fh.close()
    with open(out + "/columns.txt", "w") as fh:
        fh.write("label:label," + ",".join(n + ":cat" for n in names) + "\n")


if __name__ == "__main__":
    main()
