#!/usr/bin/env python3
"""ffm_convert.py — one Criteo-shaped TSV (label, I1..I13, C1..C26) into the
same 39 one-hot fields for libffm/xLearn and for embstore, for
bench/ffm_parity.sh.

    ffm_convert.py IN.tsv N_TRAIN OUTDIR [--hash BITS] [--no-csv]

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

--hash BITS: feature indices are CRC-32 of "field:token" modulo 2^BITS (the
way xLearn's users hash Criteo, e.g. 2^20 slots) instead of dense
per-data-set numbers, so train and test share one index space and unseen
test features may collide.  --no-csv: write only the libffm files.
"""
import zlib
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
    args = sys.argv[1:]
    bits, csv = None, True
    if "--no-csv" in args:
        args.remove("--no-csv")
        csv = False
    if "--hash" in args:
        i = args.index("--hash")
        bits = int(args[i + 1])
        del args[i:i + 2]
        if not 1 <= bits <= 31:
            sys.exit("ffm_convert.py: --hash BITS must be in [1, 31]")
    if len(args) != 3:
        sys.exit(__doc__)
    src, n_train, out = args[0], int(args[1]), args[2]
    mask = (1 << bits) - 1 if bits else 0
    names = ["I%d" % i for i in range(1, 14)] + ["C%d" % i for i in range(1, 27)]
    index = {}
    files = {}
    for part in ("train", "test"):
        files[part + ".ffm"] = open("%s/%s.ffm" % (out, part), "w")
        if csv:
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
                if bits:
                    j = zlib.crc32(("%d:%s" % (fld, t)).encode()) & mask
                else:
                    key = (fld, t)
                    j = index.get(key)
                    if j is None:
                        j = index[key] = len(index)
                feats.append("%d:%d:1" % (fld, j))
            files[part + ".ffm"].write(col[0] + " " + " ".join(feats) + "\n")
            if csv:
                files[part + ".csv"].write(col[0] + "," + ",".join(toks) + "\n")
    for fh in files.values():
        fh.close()
    with open(out + "/columns.txt", "w") as fh:
        fh.write("label:label," + ",".join(n + ":cat" for n in names) + "\n")


if __name__ == "__main__":
    main()
