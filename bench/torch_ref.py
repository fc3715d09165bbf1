#!/usr/bin/python3
"""torch_ref.py -- a PyTorch reference implementation of embstore's training.

It reads the same inputs the same way as `embstore train`, builds the same
models (LR, FM, DLRM, DCN-v2; src/model/net.h, docs/models.md) over the same
embedding storage methods (full, hash, unified; src/storage/storage.h,
docs/methods.md), trains them with the same optimizers, and prints one JSON
line with the validation metrics and the measured speeds.  It exists to
check embstore's accuracy (bench/parity.sh) and to measure its speed against
a widely used framework (bench/run.sh).

Value keys are XXH3-64 of the token bytes, computed with the system
libxxhash (the library embstore links) through ctypes, so keys, hashed rows
and collisions are the same as embstore's.  When libxxhash cannot be loaded
the script falls back to blake2b with a per-field salt (documented stand-in:
same method and table sizes, different collisions); the JSON says which
("hash_fn").

Run with the Debian interpreter, which sees python3-torch and numpy:
    /usr/bin/python3 bench/torch_ref.py data/criteo_kaggle_train_first10k.tsv \
        --valid-frac 0.2 --model dlrm --storage full --epochs 1 --seed 1

Speed figures (see the JSON keys):
  train_rows_per_s       training rows * epochs / time of the training loop
                         (batches sliced from tensors prepared in advance;
                         parsing and index mapping excluded)
  train_rows_per_s_e2e   the same rows / (load + prepare + train time)
  infer_rows_per_s       validation rows / time of the forward passes
                         (no_grad, batches of --batch rows)
  predict_rows_per_s     with --predict FILE: rows / (parse + map + forward +
                         write one probability per line), like
                         `embstore predict`
"""
import argparse
import csv
import ctypes
import ctypes.util
import hashlib
import io
import json
import math
import os
import sys
import time

import warnings

import numpy as np
import torch
import torch.nn.functional as Fn

warnings.filterwarnings("ignore", message="Initializing zero-element tensors")

KEY_MISSING = 0x9E3779B97F4A7C15  # ES_KEY_MISSING: key of an empty field
MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Hashing: XXH3-64 through the system libxxhash, or a blake2b stand-in.
# ---------------------------------------------------------------------------
class Hasher:
    def __init__(self, force_fallback=False):
        self.lib = None
        if not force_fallback:
            for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
                if not name:
                    continue
                try:
                    lib = ctypes.CDLL(name)
                    lib.XXH3_64bits.restype = ctypes.c_uint64
                    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
                    lib.XXH3_64bits_withSeed.restype = ctypes.c_uint64
                    lib.XXH3_64bits_withSeed.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]
                    self.lib = lib
                    break
                except (OSError, AttributeError):
                    continue
        self.name = "xxh3" if self.lib else "blake2b"
        self._u64 = ctypes.c_uint64()

    def key(self, token: bytes) -> int:
        """Key of a categorical token (embstore's es_key)."""
        if not token:
            return KEY_MISSING
        if self.lib:
            return self.lib.XXH3_64bits(token, len(token))
        return int.from_bytes(hashlib.blake2b(token, digest_size=8).digest(), "little")

    def hash_u64(self, key: int, seed: int) -> int:
        """Hash of a 64-bit key under a seed (embstore's es__hash_u64:
        XXH3-64 of the key's 8 little-endian bytes with the seed)."""
        if self.lib:
            self._u64.value = key
            return self.lib.XXH3_64bits_withSeed(ctypes.byref(self._u64), 8, seed & MASK64)
        salt = (seed & MASK64).to_bytes(8, "little")
        return int.from_bytes(hashlib.blake2b(key.to_bytes(8, "little"), digest_size=8, key=salt).digest(), "little")

    def hash_keys(self, keys: np.ndarray, seed: int) -> np.ndarray:
        """hash_u64 over an array of keys (computed once per distinct key)."""
        uniq, inv = np.unique(keys, return_inverse=True)
        out = np.fromiter((self.hash_u64(int(k), seed) for k in uniq), dtype=np.uint64, count=len(uniq))
        return out[inv]


def mix64(x: int) -> int:
    """splitmix64 finaliser (embstore's es__mix64), for deriving seeds."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class EsRng:
    """embstore's random stream (src/core/core.c): xoshiro256** seeded
    through splitmix64; uniform = (u64 >> 11) * 2^-53.  Pure Python (slow:
    about a million draws a second), used only by --es-init."""

    def __init__(self, seed):
        x, self.s = seed & MASK64, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    def u53(self, n):
        """n draws of (u64 >> 11), as an int64 array."""
        s0, s1, s2, s3 = self.s
        out = np.empty(n, dtype=np.int64)
        M = MASK64
        for i in range(n):
            r = (s1 * 5) & M
            r = (((r << 7) | (r >> 57)) & M) * 9 & M
            out[i] = r >> 11
            t = (s1 << 17) & M
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & M
        self.s = [s0, s1, s2, s3]
        return out

    def fill_uniform(self, n, a):
        """es__rng_fill_uniform: float((2u - 1) * a) for a float a."""
        u = self.u53(n).astype(np.float64) * (2.0 ** -53)
        return ((2.0 * u - 1.0) * float(np.float32(a))).astype(np.float32)


def hash_range(h: np.ndarray, n: int) -> np.ndarray:
    """(h * n) >> 64 for uint64 h and n < 2^32 (embstore's es__range),
    vectorised with 32-bit halves so nothing overflows."""
    assert 0 < n < (1 << 32)
    h = h.astype(np.uint64)
    hi = h >> np.uint64(32)
    lo = h & np.uint64(0xFFFFFFFF)
    n64 = np.uint64(n)
    return ((hi * n64 + ((lo * n64) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


# ---------------------------------------------------------------------------
# Reading: Criteo TSV and delimited text with a column spec.
# ---------------------------------------------------------------------------
def transform_num(x: float) -> float:
    """log1p(x) for x >= 0, -log1p(-x) for x < 0 (es_transform_num)."""
    return math.log1p(x) if x >= 0 else -math.log1p(-x)


class Data:
    """Rows in column form.  Categorical field f is CSR over rows:
    values keys[f][offs[f][r]:offs[f][r+1]] with pooling weights wts[f]."""

    def __init__(self, label, dense, offs, keys, wts, field_names, dense_names, single):
        self.label = label          # float32 [N]
        self.dense = dense          # float32 [N, D]
        self.offs = offs            # per field int64 [N+1]
        self.keys = keys            # per field uint64 [nnz]
        self.wts = wts              # per field float32 [nnz]
        self.field_names = field_names
        self.dense_names = dense_names
        self.single = single        # per field: exactly one value per row
        self.n = len(label)

    def slice(self, a, b):
        offs, keys, wts = [], [], []
        for f in range(len(self.keys)):
            o = self.offs[f]
            lo, hi = o[a], o[b]
            offs.append(o[a:b + 1] - lo)
            keys.append(self.keys[f][lo:hi])
            wts.append(self.wts[f][lo:hi])
        return Data(self.label[a:b], self.dense[a:b], offs, keys, wts, self.field_names, self.dense_names, self.single)


def _tokens_to_keys(tokens, hasher, cache):
    """Map a list of token strings to uint64 keys, hashing each distinct
    token once."""
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, t in enumerate(tokens):
        k = cache.get(t)
        if k is None:
            k = hasher.key(t.encode())
            cache[t] = k
        out[i] = k
    return out


def read_criteo(path, hasher, max_rows=0):
    """label \\t I1..I13 \\t C1..C26 per line, no header."""
    labels, dense_cols = [], [[] for _ in range(13)]
    cat_cols = [[] for _ in range(26)]
    opener = _open_text(path)
    with opener as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 40:
                raise SystemExit(f"{path}:{lineno}: expected 40 tab-separated fields, got {len(parts)}")
            labels.append(float(parts[0]))
            for d in range(13):
                s = parts[1 + d]
                dense_cols[d].append(transform_num(float(s)) if s else 0.0)
            for f in range(26):
                cat_cols[f].append(parts[14 + f])
            if max_rows and len(labels) >= max_rows:
                break
    n = len(labels)
    label = np.asarray(labels, dtype=np.float32)
    dense = np.asarray(dense_cols, dtype=np.float32).T.copy() if n else np.zeros((0, 13), np.float32)
    offs, keys, wts = [], [], []
    for f in range(26):
        keys.append(_tokens_to_keys(cat_cols[f], hasher, {}))
        offs.append(np.arange(n + 1, dtype=np.int64))
        wts.append(np.ones(n, dtype=np.float32))
    return Data(label, dense, offs, keys, wts, [f"C{i + 1}" for i in range(26)], [f"I{i + 1}" for i in range(13)],
                [True] * 26)


def _open_text(path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        import gzip
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def read_csv(path, hasher, columns, label_threshold, delim=",", multi_sep="|", pool="sum", max_rows=0):
    """Delimited text with a header; `columns` is "name:role,..." with roles
    label, num, cat, multi, ignore.  Unnamed columns are ignored.  Without a
    spec the first column is the label and the rest categorical."""
    with _open_text(path) as fh:
        rd = csv.reader(fh, delimiter=delim)
        header = next(rd)
        header = [h.strip() for h in header]
        roles = {}
        if columns:
            for item in columns.split(","):
                name, _, role = item.rpartition(":")
                name, role = name.strip(), role.strip()
                if role not in ("label", "num", "cat", "multi", "ignore"):
                    raise SystemExit(f"--columns: unknown role '{role}' in '{item}'")
                if name.isdigit() and name not in header:
                    idx = int(name)
                else:
                    if name not in header:
                        raise SystemExit(f"--columns: no column '{name}' in the header of {path}")
                    idx = header.index(name)
                roles[idx] = role
        else:
            roles = {0: "label"}
            roles.update({i: "cat" for i in range(1, len(header))})
        label_col = [i for i in sorted(roles) if roles[i] == "label"]
        num_cols = [i for i in sorted(roles) if roles[i] == "num"]
        cat_cols = [i for i in sorted(roles) if roles[i] in ("cat", "multi")]
        if len(label_col) != 1:
            raise SystemExit("--columns: need exactly one label column")
        li = label_col[0]
        labels, dense_vals = [], [[] for _ in num_cols]
        cat_tok = [[] for _ in cat_cols]
        for lineno, row in enumerate(rd, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise SystemExit(f"{path}:{lineno}: expected {len(header)} columns, got {len(row)}")
            v = float(row[li])
            labels.append(float(v >= label_threshold) if label_threshold is not None else v)
            for j, c in enumerate(num_cols):
                s = row[c]
                dense_vals[j].append(transform_num(float(s)) if s else 0.0)
            for j, c in enumerate(cat_cols):
                cat_tok[j].append(row[c])
            if max_rows and len(labels) >= max_rows:
                break
    n = len(labels)
    label = np.asarray(labels, dtype=np.float32)
    dense = (np.asarray(dense_vals, dtype=np.float32).T.copy() if num_cols else np.zeros((n, 0), np.float32))
    offs, keys, wts, single = [], [], [], []
    for j, c in enumerate(cat_cols):
        cache = {}
        if roles[c] == "cat":
            keys.append(_tokens_to_keys(cat_tok[j], hasher, cache))
            offs.append(np.arange(n + 1, dtype=np.int64))
            wts.append(np.ones(n, dtype=np.float32))
            single.append(True)
        else:
            # Multi-valued: split on multi_sep; an empty cell has no values
            # (pools to a zero vector); empty pieces are skipped.
            o = [0]
            toks, w = [], []
            for cell in cat_tok[j]:
                parts = [p for p in cell.split(multi_sep) if p] if cell else []
                toks.extend(parts)
                wt = (1.0 / len(parts)) if (pool == "mean" and parts) else 1.0
                w.extend([wt] * len(parts))
                o.append(len(toks))
            keys.append(_tokens_to_keys(toks, hasher, cache))
            offs.append(np.asarray(o, dtype=np.int64))
            wts.append(np.asarray(w, dtype=np.float32))
            single.append(False)
    return Data(label, dense, offs, keys, wts, [header[c] for c in cat_cols], [header[c] for c in num_cols], single)


def read_any(path, args, hasher, max_rows=0):
    fmt = args.format
    if fmt == "auto":
        base = path[:-3] if path.endswith(".gz") else path
        fmt = "csv" if base.endswith(".csv") else "criteo"
    if fmt == "criteo":
        return read_criteo(path, hasher, max_rows)
    if fmt == "csv":
        return read_csv(path, hasher, args.columns, args.label_threshold, delim=args.delim, multi_sep="|",
                        pool=args.pool, max_rows=max_rows)
    raise SystemExit(f"--format {fmt}: not supported by torch_ref.py (criteo, csv)")


# ---------------------------------------------------------------------------
# Storage methods: map (field, key) to rows of one parameter matrix.
# Each method exposes n_rows, chunk_dim, k (chunks per field) and
# rows(field, keys) -> int64 [len(keys), k] global row ids.
# ---------------------------------------------------------------------------
BYTES_PER_FLOAT = 4


class FullStorage:
    """One row per value seen >= min_count times in the training part, plus
    one OOV row per field.  Same layout as src/storage/full.c: field f's
    rows are contiguous, its OOV row first, then one row per kept key in
    ascending key order."""
    name = "full"

    def __init__(self, train, dim, min_count):
        self.k, self.chunk_dim = 1, dim
        self.maps, self.oov, base = [], [], 0
        for f in range(len(train.keys)):
            uniq, cnt = np.unique(train.keys[f], return_counts=True)
            kept = uniq[cnt >= min_count]          # ascending uint64
            self.oov.append(base)
            self.maps.append((kept, base + 1))
            base += len(kept) + 1
        self.n_rows = base
        self.param_bytes = self.n_rows * dim * BYTES_PER_FLOAT
        # The key -> row map as held here: sorted uint64 key arrays.
        self.aux_bytes = sum(len(k) for k, _ in self.maps) * 8

    def rows(self, f, keys):
        kept, base = self.maps[f]
        pos = np.searchsorted(kept, keys)
        pos_c = np.minimum(pos, max(len(kept) - 1, 0))
        hit = (pos < len(kept)) & (kept[pos_c] == keys) if len(kept) else np.zeros(len(keys), bool)
        r = np.where(hit, base + pos_c, self.oov[f]).astype(np.int64)
        return r[:, None]


def full_table_bytes(train, dim, min_count):
    """Parameter bytes of the full table for this vocabulary
    (es_storage_full_bytes)."""
    rows = 0
    for f in range(len(train.keys)):
        _, cnt = np.unique(train.keys[f], return_counts=True)
        rows += int((cnt >= min_count).sum()) + 1
    return rows * dim * BYTES_PER_FLOAT


def storage_salt(seed, field, chunk):
    """es__storage_salt: the hash seed of (field, chunk)."""
    fc = ((field & 0xFFFFFFFF) << 32) | (chunk & 0xFFFFFFFF)
    return mix64(mix64(seed & MASK64) ^ mix64((fc + 0x5BD1E9955BD1E995) & MASK64))


def hashed_rows_from_budget(budget_bytes, aux, row_floats, min_rows, method):
    """R = floor((budget - aux) / (row_floats * 4)), at least min_rows."""
    avail = budget_bytes - aux
    r = int(math.floor(avail / (row_floats * BYTES_PER_FLOAT))) if avail > 0 else 0
    if r < min_rows:
        raise SystemExit(f"{method}: a budget of {budget_bytes:.0f} bytes holds {r} rows of {row_floats} floats "
                         f"after {aux} bytes of lookup arrays; at least {min_rows} rows are needed")
    return r


def split_rows(R, distinct, rule="equal"):
    """src/storage/hash.c split_rows: every field 1 row, then the rest by
    integer weight (equal: 1, prop: d_f, sqrt: floor(sqrt(d_f)*1024)+1),
    each field capped at d_f + 1 rows, water-filling what capped fields
    cannot take; rows rounding leaves go one each to uncapped fields in
    field order."""
    def weight(d):
        if d == 0:
            return 0
        if rule == "sqrt":
            return int(math.floor(math.sqrt(d) * 1024.0)) + 1
        return 1 if rule == "equal" else d

    F = len(distinct)
    rows = [1] * F
    rem = R - F
    while rem > 0:
        S = sum(weight(distinct[f]) for f in range(F) if rows[f] < distinct[f] + 1)
        if S == 0:
            break
        given = 0
        for f in range(F):
            cap = distinct[f] + 1
            if rows[f] >= cap:
                continue
            add = min(rem * weight(distinct[f]) // S, cap - rows[f])
            rows[f] += add
            given += add
        if given == 0:
            for f in range(F):
                if rem <= 0:
                    break
                if rows[f] < distinct[f] + 1:
                    rows[f] += 1
                    rem -= 1
        else:
            rem -= given
    return rows


class HashStorage:
    """The hashing trick, one table per field (src/storage/hash.c,
    docs/methods.md): value key of field f reads row
    base_f + range(XXH3(key, salt_f), rows_f); R = floor((budget - 24F) /
    (dim * 4)) rows split over the fields by split_rows (default rule
    "equal", as hash.c)."""
    name = "hash"

    def __init__(self, train, dim, budget_bytes, seed, hasher, rule="equal"):
        self.k, self.chunk_dim = 1, dim
        self.hasher = hasher
        F = len(train.keys)
        aux = 24 * F
        R = hashed_rows_from_budget(budget_bytes, aux, dim, F, "hash")
        distinct = [len(np.unique(train.keys[f])) for f in range(F)]
        self.field_rows = split_rows(R, distinct, rule)
        self.bases = np.concatenate([[0], np.cumsum(self.field_rows)[:-1]]).astype(np.int64)
        self.n_rows = int(sum(self.field_rows))
        self.salts = [storage_salt(seed, f, 0) for f in range(F)]
        self.param_bytes = self.n_rows * dim * BYTES_PER_FLOAT
        self.aux_bytes = aux

    def rows(self, f, keys):
        h = self.hasher.hash_keys(keys, self.salts[f])
        return (self.bases[f] + hash_range(h, int(self.field_rows[f])))[:, None]


class UnifiedStorage:
    """Unified Embedding (src/storage/unified.c, docs/methods.md): one
    shared space of R rows of cd = dim / k floats in T sub-tables (R / T
    rows each, the first R mod T one more); chunk j of field f reads
    sub-table t = (f*k + j) mod T at row range(XXH3(key, salt(f, j)),
    rows_t); the k chunks are concatenated.  R = floor((budget - 24Fk) /
    (cd * 4))."""
    name = "unified"

    def __init__(self, n_fields, dim, budget_bytes, seed, chunks, subtables, hasher):
        if chunks < 1 or dim % chunks:
            raise SystemExit(f"unified: --chunks {chunks} must divide the embedding width {dim}")
        if not 1 <= subtables <= n_fields * chunks:
            raise SystemExit(f"unified: --subtables must be in [1, fields x chunks = {n_fields * chunks}]")
        self.k, self.chunk_dim, self.T = chunks, dim // chunks, subtables
        self.hasher = hasher
        aux = 24 * n_fields * chunks
        R = hashed_rows_from_budget(budget_bytes, aux, self.chunk_dim, subtables, "unified")
        per, extra = R // subtables, R % subtables
        self.sub_rows = [per + (1 if t < extra else 0) for t in range(subtables)]
        self.sub_base = np.concatenate([[0], np.cumsum(self.sub_rows)[:-1]]).astype(np.int64)
        self.n_rows = R
        self.salts = [[storage_salt(seed, f, j) for j in range(chunks)] for f in range(n_fields)]
        self.param_bytes = self.n_rows * self.chunk_dim * BYTES_PER_FLOAT
        self.aux_bytes = aux

    def rows(self, f, keys):
        out = np.empty((len(keys), self.k), dtype=np.int64)
        for j in range(self.k):
            t = (f * self.k + j) % self.T
            h = self.hasher.hash_keys(keys, self.salts[f][j])
            out[:, j] = self.sub_base[t] + hash_range(h, self.sub_rows[t])
        return out


def make_storage(args, train, emb_dim, hasher):
    full_bytes = full_table_bytes(train, emb_dim, args.min_count)
    b = args.budget
    budget_bytes = full_bytes if b <= 0 else (b if b > 1 else b * full_bytes)
    if args.storage == "full":
        st = FullStorage(train, emb_dim, args.min_count)
    elif args.storage == "hash":
        st = HashStorage(train, emb_dim, budget_bytes, args.seed, hasher, args.hash_split)
    elif args.storage == "unified":
        st = UnifiedStorage(len(train.keys), emb_dim, budget_bytes, args.seed, args.chunks, args.subtables, hasher)
    else:
        raise SystemExit(f"--storage {args.storage}: torch_ref.py knows full, hash, unified")
    return st, full_bytes, budget_bytes


class Prepared:
    """A data set with storage rows resolved, ready for batched lookups."""

    def __init__(self, data, st):
        F, k = len(data.keys), st.k
        self.n, self.F, self.k = data.n, F, k
        self.label = torch.from_numpy(data.label)
        self.dense = torch.from_numpy(data.dense)
        self.all_single = all(data.single)
        if self.all_single:
            idx = np.empty((data.n, F * k), dtype=np.int64)
            for f in range(F):
                idx[:, f * k:(f + 1) * k] = st.rows(f, data.keys[f])
            self.idx = torch.from_numpy(idx)
        else:
            # Bags ordered (row, field, chunk): bag b = (r*F + f)*k + j.
            counts = np.stack([np.diff(data.offs[f]) for f in range(F)], axis=1)  # [N, F]
            bag_len = np.repeat(counts.reshape(-1), k)                              # [N*F*k]
            self.bag_off = np.concatenate([[0], np.cumsum(bag_len)]).astype(np.int64)
            vals = np.empty(int(self.bag_off[-1]), dtype=np.int64)
            wts = np.empty(int(self.bag_off[-1]), dtype=np.float32)
            frows = [st.rows(f, data.keys[f]) for f in range(F)]
            # Scatter each field's values into bag order.
            for f in range(F):
                o = data.offs[f]
                for j in range(k):
                    bags = (np.arange(data.n) * F + f) * k + j
                    starts = self.bag_off[bags]
                    cnt = counts[:, f]
                    dst = np.repeat(starts, cnt) + (np.arange(o[-1]) - np.repeat(o[:-1], cnt))
                    vals[dst] = frows[f][:, j]
                    wts[dst] = data.wts[f]
            self.vals = torch.from_numpy(vals)
            self.wts = torch.from_numpy(wts)
            self.bag_off_t = torch.from_numpy(self.bag_off)

    def lookup(self, W, a, b):
        """Pooled embeddings of rows [a, b): [b - a, F, k * chunk_dim]."""
        n = b - a
        if self.all_single:
            out = Fn.embedding(self.idx[a:b], W, sparse=True)
        else:
            B0, B1 = a * self.F * self.k, b * self.F * self.k
            v0, v1 = int(self.bag_off[B0]), int(self.bag_off[B1])
            offs = self.bag_off_t[B0:B1] - v0
            out = Fn.embedding_bag(self.vals[v0:v1], W, offs, mode="sum", sparse=True,
                                   per_sample_weights=self.wts[v0:v1])
        return out.reshape(n, self.F, -1)


# ---------------------------------------------------------------------------
# Models (src/model/net.h, docs/models.md).
# ---------------------------------------------------------------------------
def emb_dim_for(model, dim):
    return {"lr": 1, "fm": 1 + dim}.get(model, dim)


def uniform_(t, a, gen):
    """t ~ U(-a, a) (a = 0: zeros)."""
    with torch.no_grad():
        if a > 0:
            t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * a)
        else:
            t.zero_()


def init_linear(lin, gen):
    """embstore's scheme (src/model/net.c, docs/models.md): both W[out, in]
    and b[out] ~ U(-a, a) with a = 1/sqrt(in) (PyTorch's nn.Linear bound,
    drawn uniformly for the bias too)."""
    a = 1.0 / math.sqrt(lin.weight.shape[1])
    uniform_(lin.weight, a, gen)
    uniform_(lin.bias, a, gen)


def mlp(dims, gen, last_relu):
    """Linear layers dims[0] -> ... -> dims[-1], ReLU after each hidden
    layer (and after the last when last_relu: the DLRM bottom)."""
    layers = []
    for i in range(len(dims) - 1):
        lin = torch.nn.Linear(dims[i], dims[i + 1])
        init_linear(lin, gen)
        layers.append(lin)
        if i < len(dims) - 2 or last_relu:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class LR(torch.nn.Module):
    """logit = b + w . dense + sum_f emb[f][0]."""

    def __init__(self, D, F, k, gen):
        super().__init__()
        self.lin = torch.nn.Linear(D, 1)
        uniform_(self.lin.weight, 0, gen)
        uniform_(self.lin.bias, 0, gen)

    def forward(self, emb, dense):
        return self.lin(dense).squeeze(1) + emb[:, :, 0].sum(1)


class FM(torch.nn.Module):
    """LR plus sum_{i<j} <v_i, v_j> over field vectors emb[f][1:] and numeric
    vectors x_d * V_d."""

    def __init__(self, D, F, k, gen):
        super().__init__()
        self.lin = torch.nn.Linear(D, 1)
        uniform_(self.lin.weight, 0, gen)
        uniform_(self.lin.bias, 0, gen)
        self.V = torch.nn.Parameter(torch.empty(D, k))
        uniform_(self.V, 0.05, gen)

    def forward(self, emb, dense):
        first = self.lin(dense).squeeze(1) + emb[:, :, 0].sum(1)
        v = torch.cat([emb[:, :, 1:], dense.unsqueeze(2) * self.V.unsqueeze(0)], dim=1)  # [n, F+D, k]
        s = v.sum(1)
        second = 0.5 * ((s * s).sum(1) - (v * v).sum((1, 2)))
        return first + second


class DLRM(torch.nn.Module):
    """z0 = bottom(dense); dots of {z0, emb_f} (strict upper triangle);
    top([z0, dots]) -> logit."""

    def __init__(self, D, F, k, gen, bottom, top):
        super().__init__()
        # Without numeric features there is no bottom MLP and no z0.
        self.has_z0 = D > 0
        if self.has_z0 and bottom[-1] != k:
            raise SystemExit(f"--bottom must end with the embedding dim {k}")
        self.bottom = mlp([D] + bottom, gen, last_relu=True) if self.has_z0 else None
        T = F + (1 if self.has_z0 else 0)
        self.register_buffer("iu", torch.triu_indices(T, T, offset=1))
        self.top = mlp([(k if self.has_z0 else 0) + T * (T - 1) // 2] + top + [1], gen, last_relu=False)

    def forward(self, emb, dense):
        if self.has_z0:
            z0 = self.bottom(dense)
            X = torch.cat([z0.unsqueeze(1), emb], dim=1)      # [n, T, k]
        else:
            X = emb
        G = torch.bmm(X, X.transpose(1, 2))                   # [n, T, T]
        dots = G[:, self.iu[0], self.iu[1]]                   # (0,1),(0,2),...,(1,2),...
        return self.top(torch.cat([z0, dots], dim=1) if self.has_z0 else dots).squeeze(1)


class DCN(torch.nn.Module):
    """x0 = [dense, emb...]; x_{l+1} = x0 * (W_l x_l + b_l) + x_l; deep MLP
    on x_L; final linear -> logit."""

    def __init__(self, D, F, k, gen, top, n_cross):
        super().__init__()
        d = D + F * k
        self.cross = torch.nn.ModuleList()
        for _ in range(n_cross):
            lin = torch.nn.Linear(d, d)
            init_linear(lin, gen)             # U(+-1/sqrt(d)) for W and b
            self.cross.append(lin)
        self.deep = mlp([d] + top + [1], gen, last_relu=False)

    def forward(self, emb, dense):
        x0 = torch.cat([dense, emb.reshape(emb.shape[0], -1)], dim=1)
        x = x0
        for lin in self.cross:
            x = x0 * lin(x) + x
        return self.deep(x).squeeze(1)


def es_init_net(net, seed):
    """Overwrite the net's parameters with the exact values embstore draws
    (src/model/net.c): one stream seeded with mix64(seed ^ 0x6e6574), the
    segments in layout order, each W then b; MLP and cross layers
    U(+-1/sqrtf(in)), LR/FM linear terms 0, FM V U(+-0.05)."""
    rng = EsRng(mix64((seed ^ 0x6E6574) & MASK64))

    def fill(t, a):
        with torch.no_grad():
            if a > 0 and t.numel():
                t.copy_(torch.from_numpy(rng.fill_uniform(t.numel(), a)).reshape(t.shape))
            else:
                t.zero_()

    def linears(seq):
        for lin in seq:
            if isinstance(lin, torch.nn.Linear):
                a = np.float32(1.0) / np.sqrt(np.float32(lin.weight.shape[1]))
                fill(lin.weight, a)
                fill(lin.bias, a)

    if isinstance(net, (LR, FM)):
        fill(net.lin.weight, 0)
        fill(net.lin.bias, 0)
        if isinstance(net, FM):
            fill(net.V, 0.05)
    elif isinstance(net, DLRM):
        if net.bottom is not None:
            linears(net.bottom)
        linears(net.top)
    elif isinstance(net, DCN):
        linears(net.cross)
        linears(net.deep)


def make_net(args, D, F):
    gen = torch.Generator().manual_seed(args.seed)
    if args.model == "lr":
        return LR(D, F, args.dim, gen)
    if args.model == "fm":
        return FM(D, F, args.dim, gen)
    if args.model == "dlrm":
        return DLRM(D, F, args.dim, gen, args.bottom, args.top)
    if args.model == "dcn":
        return DCN(D, F, args.dim, gen, args.top, args.cross)
    raise SystemExit(f"--model {args.model}: lr, fm, dlrm or dcn")


# ---------------------------------------------------------------------------
# Sparse row-wise Adagrad on the table (by hand, duplicates summed first).
# ---------------------------------------------------------------------------
class RowwiseAdagrad:
    def __init__(self, W, lr, eps):
        self.W, self.lr, self.eps = W, lr, eps
        self.acc = torch.zeros(W.shape[0])

    @torch.no_grad()
    def step(self):
        g = self.W.grad
        if g is None:
            return
        g = g.coalesce()                       # sums the gradients of duplicate rows
        rows, vals = g.indices()[0], g.values()
        a = self.acc[rows] + vals.pow(2).mean(1)
        self.acc[rows] = a
        self.W.index_add_(0, rows, -self.lr * vals / (a.sqrt() + self.eps).unsqueeze(1))
        self.W.grad = None


class Adagrad:
    """Per-element sparse Adagrad (--emb-optim adagrad)."""

    def __init__(self, W, lr, eps):
        self.W, self.lr, self.eps = W, lr, eps
        self.acc = torch.zeros_like(W)

    @torch.no_grad()
    def step(self):
        g = self.W.grad
        if g is None:
            return
        g = g.coalesce()
        rows, vals = g.indices()[0], g.values()
        a = self.acc[rows] + vals.pow(2)
        self.acc[rows] = a
        self.W.index_add_(0, rows, -self.lr * vals / (a.sqrt() + self.eps))
        self.W.grad = None


class SGD:
    def __init__(self, W, lr, eps):
        self.W, self.lr = W, lr

    @torch.no_grad()
    def step(self):
        g = self.W.grad
        if g is None:
            return
        g = g.coalesce()
        self.W.index_add_(0, g.indices()[0], -self.lr * g.values())
        self.W.grad = None


# ---------------------------------------------------------------------------
# Metrics: exact AUC (ties half) and logloss, as src/train/metrics.c.
# ---------------------------------------------------------------------------
def auc_exact(p, y):
    p = np.asarray(p, dtype=np.float32).astype(np.float64)
    y = np.asarray(y) > 0.5
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    # mid-ranks of tied groups
    uniq_start = np.concatenate([[True], ps[1:] != ps[:-1]])
    group = np.cumsum(uniq_start) - 1
    starts = np.nonzero(uniq_start)[0]
    ends = np.concatenate([starts[1:], [len(ps)]])
    mid = 0.5 * ((starts + 1) + ends)
    ranks = mid[group]
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(p, y):
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y) > 0.5
    return float(-np.mean(np.where(y, np.log(q), np.log(1 - q))))


# ---------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------
def parse_budget(s):
    """Like embstore's --budget: bytes ("2000000", "4M", "1G", "512k") or a
    fraction of the full table ("0.1", "1/100"); 0 = full size."""
    s = s.strip()
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b)
    mul = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], None)
    return float(s[:-1]) * mul if mul else float(s)


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv):
    ap = argparse.ArgumentParser(description="PyTorch reference for `embstore train`.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("train", help="training file (Criteo .tsv or .csv with --columns)")
    ap.add_argument("--valid", help="validation file (default: hold out --valid-frac of train)")
    ap.add_argument("--valid-frac", type=float, default=0.2, help="last fraction of the train rows held out")
    ap.add_argument("--format", default="auto", choices=["auto", "criteo", "csv"])
    ap.add_argument("--columns", help='CSV column spec "name:role,..." (label,num,cat,multi,ignore)')
    ap.add_argument("--label-threshold", type=float, default=None, help="label = (label column >= T)")
    ap.add_argument("--delim", default=",", help="CSV delimiter")
    ap.add_argument("--pool", default="sum", choices=["sum", "mean"], help="pooling of multi-valued fields")
    ap.add_argument("--model", default="dlrm", choices=["lr", "fm", "dlrm", "dcn"])
    ap.add_argument("--storage", default="full", choices=["full", "hash", "unified"])
    ap.add_argument("--budget", type=parse_budget, default=0, help="bytes if > 1, fraction of full if <= 1, 0 = full size")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--bottom", type=int_list, default=None, help="DLRM bottom MLP widths (last = dim)")
    ap.add_argument("--top", type=int_list, default=None, help="DLRM top / DCN deep widths (final 1 implied)")
    ap.add_argument("--cross", type=int, default=2, help="DCN cross layers")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3, help="dense optimizer learning rate (Adam)")
    ap.add_argument("--emb-lr", type=float, default=0.05, help="table optimizer learning rate")
    ap.add_argument("--emb-optim", default="rowwise", choices=["rowwise", "adagrad", "sgd"])
    ap.add_argument("--emb-eps", type=float, default=1e-8)
    ap.add_argument("--init-scale", type=float, default=0.05, help="table rows ~ U(-s, s) (LR tables: zeros)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--hash-split", default="equal", choices=["equal", "prop", "sqrt"],
                    help="hash: how rows are split over fields (embstore --storage-opts split=...)")
    ap.add_argument("--chunks", type=int, default=1)
    ap.add_argument("--subtables", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rows", type=int, default=0, help="read at most this many rows of the train file")
    ap.add_argument("--predict", metavar="FILE", help="after training, time parse+map+forward+write on FILE")
    ap.add_argument("--pred-out", default=os.devnull, help="where --predict writes probabilities")
    ap.add_argument("--eval-batch", type=int, default=0, help="batch for inference (default: --batch)")
    ap.add_argument("--es-init", action="store_true",
                    help="start from embstore's exact initial values (its rng in pure Python: slow for big tables)")
    ap.add_argument("--hash-fallback", action="store_true", help="use the blake2b stand-in instead of libxxhash")
    ap.add_argument("--epoch-log", action="store_true", help="print train loss and valid AUC per epoch to stderr")
    a = ap.parse_args(argv)
    if a.bottom is None:
        a.bottom = [64, a.dim]
    if a.top is None:
        a.top = [64, 32]
    return a


def predict_probs(net, W, prep, batch):
    out = np.empty(prep.n, dtype=np.float32)
    with torch.no_grad():
        for a in range(0, prep.n, batch):
            b = min(prep.n, a + batch)
            emb = prep.lookup(W, a, b)
            out[a:b] = torch.sigmoid(net(emb, prep.dense[a:b])).numpy()
    return out


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(max(1, args.threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    hasher = Hasher(force_fallback=args.hash_fallback)

    t0 = time.perf_counter()
    data = read_any(args.train, args, hasher, args.max_rows)
    if args.valid:
        train, valid = data, read_any(args.valid, args, hasher)
    else:
        n_valid = int(math.floor(args.valid_frac * data.n + 0.5)) if args.valid_frac > 0 else 0
        n_train = data.n - n_valid
        train, valid = data.slice(0, n_train), data.slice(n_train, data.n)
    t_read = time.perf_counter() - t0

    E = emb_dim_for(args.model, args.dim)
    st, full_bytes, budget_bytes = make_storage(args, train, E, hasher)
    ptrain, pvalid = Prepared(train, st), Prepared(valid, st) if valid.n else None
    t_prep = time.perf_counter() - t0 - t_read

    scale = 0.0 if args.model == "lr" else args.init_scale
    if args.es_init:
        # The same initial values as embstore: the table drawn row-major
        # from a stream seeded with the storage seed (= --seed).
        W0 = torch.from_numpy(EsRng(args.seed).fill_uniform(st.n_rows * st.chunk_dim, scale) if scale > 0 else
                              np.zeros(st.n_rows * st.chunk_dim, np.float32)).reshape(st.n_rows, st.chunk_dim)
    else:
        gen = torch.Generator().manual_seed(args.seed + 1000003)
        W0 = (torch.rand((st.n_rows, st.chunk_dim), generator=gen) * 2 - 1) * scale
    W = W0.requires_grad_(True)
    net = make_net(args, train.dense.shape[1], len(train.keys))
    if args.es_init:
        es_init_net(net, args.seed)
    dense_params = list(net.parameters())
    # Weight decay (L2 added to the gradient, as torch.optim and optim.c do)
    # on weights only, not biases.
    decay = [p for n_, p in net.named_parameters() if not n_.endswith("bias")]
    no_decay = [p for n_, p in net.named_parameters() if n_.endswith("bias")]
    dopt = torch.optim.Adam([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.999), eps=1e-8) if dense_params else None
    eopt = {"rowwise": RowwiseAdagrad, "adagrad": Adagrad, "sgd": SGD}[args.emb_optim](W, args.emb_lr, args.emb_eps)

    n, B = ptrain.n, args.batch
    epoch_stats = []
    t_train = 0.0
    for ep in range(args.epochs):
        loss_sum = 0.0
        ts = time.perf_counter()
        for a in range(0, n, B):
            b = min(n, a + B)
            # Rows in file order, as embstore streams them.
            emb = ptrain.lookup(W, a, b)
            dense, y = ptrain.dense[a:b], ptrain.label[a:b]
            logit = net(emb, dense)
            loss = Fn.binary_cross_entropy_with_logits(logit, y)
            if dopt:
                dopt.zero_grad(set_to_none=True)
            loss.backward()
            if dopt:
                dopt.step()
            eopt.step()
            loss_sum += float(loss) * (b - a)
        t_train += time.perf_counter() - ts
        rec = {"epoch": ep + 1, "train_loss": loss_sum / max(n, 1)}
        if args.epoch_log and pvalid is not None:
            pv = predict_probs(net, W, pvalid, args.eval_batch or B)
            rec["valid_auc"] = auc_exact(pv, valid.label)
            rec["valid_logloss"] = logloss(pv, valid.label)
        epoch_stats.append(rec)
        if args.epoch_log:
            print(json.dumps(rec), file=sys.stderr)

    res = {"model": args.model, "storage": args.storage}
    if pvalid is not None:
        ts = time.perf_counter()
        pv = predict_probs(net, W, pvalid, args.eval_batch or B)
        t_inf = time.perf_counter() - ts
        res.update(auc=auc_exact(pv, valid.label), logloss=logloss(pv, valid.label),
                   rows=int(valid.n), infer_rows_per_s=valid.n / t_inf if t_inf > 0 else None,
                   base_rate=float(np.mean(valid.label)), mean_pred=float(np.mean(pv)))
    else:
        res.update(auc=None, logloss=None, rows=0, infer_rows_per_s=None)
    res.update(train_rows=int(n), train_loss=epoch_stats[-1]["train_loss"] if epoch_stats else None,
               train_rows_per_s=n * args.epochs / t_train if t_train > 0 else None,
               train_rows_per_s_e2e=n * args.epochs / (t_read + t_prep + t_train) if t_train > 0 else None,
               read_s=t_read, prepare_s=t_prep, train_s=t_train,
               emb_bytes=int(st.param_bytes + st.aux_bytes), emb_param_bytes=int(st.param_bytes),
               emb_rows=int(st.n_rows), full_bytes=int(full_bytes),
               budget_bytes=int(budget_bytes),
               net_bytes=int(sum(p.numel() for p in dense_params) * 4),
               epochs=args.epochs, batch=B, dim=args.dim, threads=torch.get_num_threads(), seed=args.seed,
               hash_fn=hasher.name, es_init=bool(args.es_init), torch=torch.__version__, epoch_stats=epoch_stats)

    if args.predict:
        ts = time.perf_counter()
        pd = read_any(args.predict, args, hasher)
        pp = Prepared(pd, st)
        probs = predict_probs(net, W, pp, args.eval_batch or B)
        with open(args.pred_out, "w") as fh:
            fh.write("".join(f"{p:.6f}\n" for p in probs))  # 6 decimals, as embstore predict
        t_pred = time.perf_counter() - ts
        res.update(predict_rows=int(pd.n), predict_rows_per_s=pd.n / t_pred if t_pred > 0 else None)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
