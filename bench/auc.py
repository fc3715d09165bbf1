#!/usr/bin/env python3
"""auc.py LABELS PROBS — exact AUC (ties count half) of the probabilities in
PROBS (one per line, e.g. ffm-predict / xlearn_predict output) against the
labels in the first token of each line of LABELS (a libffm/libsvm file).
Pure Python, no dependencies."""
import sys


def auc(y, p):
    idx = sorted(range(len(p)), key=lambda i: p[i])
    rank_pos, i, n = 0.0, 0, len(p)
    while i < n:
        j = i
        while j + 1 < n and p[idx[j + 1]] == p[idx[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for t in range(i, j + 1):
            if y[idx[t]] > 0:
                rank_pos += avg
        i = j + 1
    npos = sum(1 for v in y if v > 0)
    nneg = n - npos
    return (rank_pos - npos * (npos + 1) / 2.0) / (npos * nneg)


if __name__ == "__main__":
    y = [float(line.split()[0]) for line in open(sys.argv[1])]
    p = [float(line) for line in open(sys.argv[2])]
    if len(y) != len(p):
        sys.exit("auc.py: %d labels, %d predictions" % (len(y), len(p)))
    print("%.4f" % auc(y, p))
