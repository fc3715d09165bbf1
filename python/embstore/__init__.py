"""embstore: learnable embedding storage (CTR models, compressed tables,
vector indexes) -- Python bindings over libembstore.so (ctypes + numpy).

    import embstore
    metrics = embstore.train("train.tsv", model="fm", storage="hash", budget=1e6, out="m.es")
    m = embstore.Model("m.es")
    p = m.predict("test.tsv")                 # float32 probabilities
    p1 = m.predict([{"I1": 3, "C1": "05db9164"}])  # rows keyed by column, as the server takes them
    w = m.table()                             # zero-copy view of the embedding table
    ix = embstore.Index.build(x, kind="hnsw", hnsw_m=16)
    D, I = ix.search(q, 10)                   # like faiss

See docs/python.md.
"""
import ctypes
import json
import os
import re
import tempfile
import weakref

import numpy as np

from . import _lib
from ._lib import ES, es_batch, es_err

__all__ = ["EmbstoreError", "RowError", "train", "Model", "Index", "diagnose", "read_vecs", "key", "keys",
           "transform_num", "set_threads", "LIBRARY_PATH"]

LIBRARY_PATH = _lib.LIBRARY_PATH
LOAD_NO_VERIFY, LOAD_MAP = 1, 2


class EmbstoreError(RuntimeError):
    """A failed library call: .code is the ES_E* status (negative int),
    .code_name its name ("ENOTFOUND", ...), .msg the library's message."""

    def __init__(self, code, msg):
        self.code = code
        self.code_name = _lib.ERR_NAMES.get(code, str(code))
        self.msg = msg
        super().__init__(f"{msg} [{self.code_name}]" if msg else f"{ES.es_strerror(code).decode()} [{self.code_name}]")


class RowError(EmbstoreError, ValueError):
    """A row of Model.predict(list of dicts) that cannot be read: .row is
    its index in the list, .column the column name ("" when the row as a
    whole is wrong), .reason what is wrong with it.  Also a ValueError."""

    def __init__(self, row, column, reason, code=-1):
        self.row, self.column, self.reason = row, column, reason
        where = f"row {row}, column {column!r}" if column else f"row {row}"
        super().__init__(code, f"{where}: {reason}")


def _check(rc, msg):
    if rc < 0:
        if isinstance(msg, (bytes, bytearray)):
            msg = msg.decode("utf-8", "replace")
        elif isinstance(msg, es_err):
            msg = msg.msg.decode("utf-8", "replace")
        raise EmbstoreError(rc, msg or ES.es_strerror(rc).decode())
    return rc


def _path(p, what="path"):
    if not isinstance(p, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, not {type(p).__name__}")
    return os.fsencode(p)


def _array(a, dtype, ndim, what, dim=None):
    """Check (never convert) an array before it reaches C: numpy array of
    `dtype`, C-contiguous, `ndim` dimensions, and dim columns when given."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of {np.dtype(dtype).name}, not {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{what} must have dtype {np.dtype(dtype).name}, got {a.dtype.name} "
                        f"(convert with .astype(np.{np.dtype(dtype).name}))")
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if dim is not None and a.shape[-1] != dim:
        raise ValueError(f"{what} has {a.shape[-1]} columns, expected {dim}")
    return a


def _ptr(a, ctype):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def set_threads(n):
    """Threads used by training, prediction and search (n <= 0: all cores); returns the number in effect."""
    return ES.es_set_threads(int(n))


def key(token):
    """The categorical key of a token (XXH3-64 of its UTF-8 bytes; "" gives the missing key)."""
    b = token.encode() if isinstance(token, str) else bytes(token)
    return int(ES.es_key(b, len(b)))


def keys(tokens):
    """Keys of a sequence of tokens as a uint64 array (shape kept for nested lists of equal length)."""
    arr = np.asarray(tokens, dtype=object)
    out = np.fromiter((key(t) for t in arr.ravel()), dtype=np.uint64, count=arr.size)
    return out.reshape(arr.shape)


def transform_num(x):
    """The reader's numeric transform, vectorised: log1p(x) for x >= 0,
    -log1p(-x) below, 0 for NaN -- computed in float64 then rounded to
    float32, which is what es_transform_num does (same bits)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        y = np.where(x >= 0, np.log1p(np.abs(x)), -np.log1p(np.abs(x)))
    y = np.where(np.isnan(x), 0.0, y)
    return y.astype(np.float32)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
_FORMATS = {"auto": 0, "criteo": 1, "csv": 2, "libsvm": 3, "libffm": 4, "esd": 5}
_POOLS = {"sum": 0, "mean": 1}
_TRAIN_ALIASES = {"valid": "valid_path", "test": "test_path", "out": "out_path", "checkpoint": "checkpoint_path"}
_READER_FIELDS = {n for n, _ in _lib.es_reader_params._fields_}


def _metrics(m):
    return {"auc": m.auc, "logloss": m.logloss, "calibration": m.calibration, "base_rate": m.base_rate,
            "mean_pred": m.mean_pred, "rows": int(m.rows)}


def _set_reader_field(rp, name, v, keep):
    if name == "format" and isinstance(v, str):
        if v not in _FORMATS:
            raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {v!r}")
        v = _FORMATS[v]
    elif name == "pool" and isinstance(v, str):
        if v not in _POOLS:
            raise ValueError(f"pool must be 'sum' or 'mean', got {v!r}")
        v = _POOLS[v]
    elif name in ("delim", "multi_sep"):
        v = "\t" if v == "tab" else v
        if not isinstance(v, (str, bytes)) or len(v) != 1:
            raise ValueError(f"{name} must be one character")
        v = v.encode() if isinstance(v, str) else v
    elif name == "columns":
        v = None if v is None else str(v).encode()
        keep.append(v)
    elif isinstance(v, bool):
        v = int(v)
    setattr(rp, name, v)


def train(path, progress=None, **flags):
    """Train a model end to end (es_train) and return its metrics as a dict.

    `path` is the training file; every other es_train_params field is a
    keyword of the same name (model="fm", dim=8, storage="hash",
    budget=1e6, epochs=2, lr=0.01, seed=1, threads=1, max_rows=..., ...),
    with the reader's fields too (format="csv", columns="y:label,...",
    delim=",", header=True, has_label=True, skip_bad=True, ...), and the
    aliases valid=, test=, out= (valid_path, test_path, out_path).  bottom=
    and top= take lists of layer widths.  Unset fields keep `embstore
    train`'s defaults (es_train_params_default).  progress: optional
    callable receiving a dict about four times a second.
    Raises EmbstoreError with the library's message on failure."""
    p = ES.es_train_params_default()
    keep = []  # bytes objects referenced by p must outlive the call

    def s(v):
        b = None if v is None else os.fsencode(v) if isinstance(v, os.PathLike) else str(v).encode()
        keep.append(b)
        return b

    p.train_path = s(_path(path, "path").decode())
    known = {n for n, _ in _lib.es_train_params._fields_} - {"reader", "progress", "progress_ctx", "comm", "train_path",
                                                             "n_bottom", "n_top"}
    for k, v in flags.items():
        name = _TRAIN_ALIASES.get(k, k)
        if name in _READER_FIELDS:
            _set_reader_field(p.reader, name, v, keep)
        elif name in ("bottom", "top"):
            v = list(v)
            if len(v) > 8:
                raise ValueError(f"{name}: at most 8 layers")
            arr = getattr(p, name)
            for i, w in enumerate(v):
                arr[i] = int(w)
            setattr(p, "n_" + name, len(v))
        elif name in known:
            ctype = dict(_lib.es_train_params._fields_)[name]
            if ctype is ctypes.c_char_p:
                v = s(v)
            elif isinstance(v, bool):
                v = int(v)
            elif ctype in (ctypes.c_int, ctypes.c_uint64):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if not isinstance(v, int):
                    raise TypeError(f"{k} must be an int, got {v!r}")
            setattr(p, name, v)
        else:
            raise TypeError(f"train() got an unknown flag {k!r}; known: "
                            + ", ".join(sorted(known | _READER_FIELDS | {"bottom", "top"} | set(_TRAIN_ALIASES))))
    if progress is not None:
        def cb(pp, _ctx):
            q = pp.contents
            try:
                progress({"epoch": q.epoch, "epochs": q.epochs, "rows": q.rows, "rows_total": q.rows_total,
                          "rows_per_s": q.rows_per_s, "loss": q.loss,
                          "phase": q.phase.decode() if q.phase else ""})
            except Exception:  # an exception cannot cross the C frames
                pass
        p.progress = _lib.PROGRESS_FN(cb)
        keep.append(p.progress)
    res = _lib.es_train_result()
    err = es_err()
    _check(ES.es_train(ctypes.byref(p), ctypes.byref(res), ctypes.byref(err)), err)
    out = {"valid": _metrics(res.valid), "test": _metrics(res.test), "train_loss": res.train_loss,
           "train_rows": int(res.train_rows), "emb_bytes": res.emb_bytes, "emb_param_bytes": res.emb_param_bytes,
           "emb_state_bytes": res.emb_state_bytes, "full_bytes": res.full_bytes, "net_bytes": res.net_bytes,
           "param_bytes": res.param_bytes, "train_rows_per_s": res.train_rows_per_s,
           "eval_rows_per_s": res.eval_rows_per_s, "seconds": res.seconds, "threads": res.threads,
           "resumed": bool(res.resumed), "bad_lines": int(res.bad_lines),
           "bad_report": res.bad_report.decode("utf-8", "replace"), "n_evals": res.n_evals,
           "best_eval": res.best_eval, "best_epoch": res.best_epoch, "best_rows": int(res.best_rows),
           "stopped_early": bool(res.stopped_early), "refit": bool(res.refit), "refit_rows": int(res.refit_rows),
           "evals": [_metrics(res.evals[i]) for i in range(min(res.n_evals, 128))],
           # multi-stage methods (autodim): each stage's name, seconds and result
           "stages": [{"name": res.stages[i].name.decode(), "seconds": res.stages[i].seconds,
                       "result": json.loads(res.stages[i].result.decode("utf-8", "replace"))}
                      for i in range(min(res.n_stages, 4))],
           # Matryoshka: the model's metrics at each trained prefix
           "prefixes": [{"dim": res.prefixes[i].dim, "valid": _metrics(res.prefixes[i].valid),
                         "test": _metrics(res.prefixes[i].test), "emb_bytes": res.prefixes[i].emb_bytes}
                        for i in range(min(res.n_prefixes, 8))],
           # in_memory=1: bytes of training rows held in memory (0: every pass parsed the file)
           "in_memory_bytes": int(res.in_memory_bytes)}
    return out


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
_NP_DTYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "u8": np.uint8, "i32": np.int32,
              "u32": np.uint32, "i64": np.int64, "u64": np.uint64, "i4": np.uint8}


class _View:
    """Owner of a zero-copy table view: numpy keeps it as the array's base,
    and it keeps the Model alive as long as any view of it exists."""

    def __init__(self, model, addr, shape, typestr):
        self.model = model
        self.__array_interface__ = {"data": (addr, False), "shape": shape, "typestr": typestr, "version": 3}


class Model:
    """A trained model (es_model_load).  mmap=True (default) maps the large
    tensors copy-on-write from the file (ES_LOAD_MAP): loading takes no time
    that grows with the table, and table() views are the mapped pages.
    verify=False skips the tensor checksums.  One call at a time per model
    (the library's thread rule); use one Model per thread."""

    def __init__(self, path, mmap=True, verify=True):
        self._h = None
        self._views = weakref.WeakSet()
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        h = ctypes.c_void_p()
        err = es_err()
        flags = (LOAD_MAP if mmap else 0) | (0 if verify else LOAD_NO_VERIFY)
        _check(ES.es_model_load(ctypes.byref(h), _path(path), flags, ctypes.byref(err)), err)
        self._h = h
        self.n_fields = ES.es_model_n_fields(h)
        self.n_dense = ES.es_model_n_dense(h)
        self.dim = ES.es_model_emb_dim(h)

    # -- lifetime --
    def close(self):
        """Free the model now.  Refused while a table() view is alive (it
        would point at freed memory)."""
        if self._h is None:
            return
        if len(self._views):
            raise RuntimeError("Model.close(): table views of this model are still alive; delete them first")
        ES.es_model_free(self._h)
        self._h = None

    def __del__(self):
        h = getattr(self, "_h", None)
        if h is not None:
            ES.es_model_free(h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _handle(self):
        if self._h is None:
            raise ValueError("the model is closed")
        return self._h

    def _fail(self, rc):
        return _check(rc, ES.es_model_errmsg(self._h))

    # -- metadata --
    def meta(self, key):
        """A metadata value stored with the model (None if absent)."""
        v = ES.es_model_meta(self._handle(), key.encode())
        return None if v is None else v.decode()

    @property
    def fields(self):
        """Names of the categorical fields, in the model's order."""
        v = self.meta("schema.fields")
        return v.split(",") if v else [f"c{i}" for i in range(self.n_fields)]

    @property
    def dense_names(self):
        v = self.meta("schema.dense")
        return v.split(",") if v else [f"d{i}" for i in range(self.n_dense)]

    # -- prediction --
    def predict(self, data=None, dense=None, has_label=True, keys=None):
        """Click probabilities as a float32 array.

        data may be:
          - a path (str / os.PathLike): the file, read the way the model was
            trained (its reader parameters); has_label=False for a file
            without the label column;
          - a list of str: text lines in the model's own input format (for a
            CSV model with a header, the first line is the header);
          - a list of dicts keyed by column name, like the server's JSON
            rows ({"I1": 3, "C1": "05db9164"}; a missing key is an empty
            field; values str, int, float, None, or a list for a CSV multi
            column): written as lines of the model's format and read by the
            library's reader (es_model_predict_mem), so the same bits as the
            server and `embstore predict --digits 9`; a row that cannot be
            read raises RowError naming its index and column;
          - a uint64 array [n, n_fields] of categorical keys (embstore.key /
            embstore.keys of the tokens), with dense a float32 array
            [n, n_dense] of the raw numeric values (transformed here by the
            reader's rule, transform_num) when the model has numeric
            features.  keys= is the same as passing the array as data."""
        h = self._handle()
        if keys is not None:
            data = keys
        if isinstance(data, np.ndarray):
            return self._predict_keys(data, dense)
        if isinstance(data, (str, bytes, os.PathLike)):
            return self._predict_path(data, has_label)
        if isinstance(data, (list, tuple)) and all(isinstance(x, str) for x in data):
            return self._predict_lines(data, has_label)
        if isinstance(data, (list, tuple)) and data and all(isinstance(x, dict) for x in data):
            return self._predict_dicts(data)
        if isinstance(data, dict):
            raise TypeError("predict() takes rows as a list of dicts: pass [row] for one row")
        raise TypeError("predict() takes a path, a list of text lines, a list of dicts keyed by column name or a "
                        f"uint64 key array [n, {self.n_fields}], not {type(data).__name__}")

    # -- rows as dicts -- the server's JSON rows (src/serve/request.c,
    # es__schema_from_model and rows_to_text): each row is written as a line
    # of the model's own input format and the lines are read by the
    # library's reader (es_model_predict_mem), the path of `embstore
    # predict` and of the server, so a row gives the same bits all three ways.
    def _row_schema(self):
        """(format, delim, multi_sep, columns, multi, index): the input columns a
        row may name -- the numeric ones, then the categorical ones as the
        model was trained on them (Criteo: I1..I13, C1..C26; derived num_cat
        fields are not sent), which of them are multi-valued, and the
        position of each name."""
        rp = ES.es_model_reader_params(self._handle())
        fmt = rp.format
        delim = (rp.delim or (b"\t" if fmt == 1 else b",")).decode("latin-1")
        sep = (rp.multi_sep or b"|").decode("latin-1")
        fields_meta, dense_meta = self.meta("schema.fields"), self.meta("schema.dense")
        fields = fields_meta.split(",") if fields_meta else []
        dense = dense_meta.split(",") if dense_meta else []
        names = {1: "Criteo TSV", 2: "CSV", 3: "libsvm", 4: "libffm"}
        if not (fmt == 1 or (fmt == 2 and rp.header != 0)) or len(fields) != self.n_fields or \
                (self.n_dense and len(dense) != self.n_dense):
            raise TypeError(f"this model reads {names.get(fmt, 'text')} lines without column names: "
                            "predict() takes text lines or key arrays for it, not dicts")
        n_cat = min(self.n_fields, 26) if fmt == 1 else self.n_fields
        cols = dense[:self.n_dense] + fields[:n_cat]
        spec = rp.columns.decode() if rp.columns else ""
        multi_names = {e.rsplit(":", 1)[0] for e in spec.split(",") if e.endswith(":multi")} if fmt == 2 else set()
        multi = [i >= self.n_dense and c in multi_names for i, c in enumerate(cols)]
        return fmt, delim, sep, cols, multi, {c: i for i, c in enumerate(cols)}

    @staticmethod
    def _scalar_text(v):
        """A value as the server writes a JSON scalar: str as is, int %d,
        float %.17g (reads back to the same double), None ""; else None."""
        if v is None:
            return ""
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return "%d" % int(v)
        if isinstance(v, (float, np.floating)):
            return "%.17g" % float(v)
        return None

    @staticmethod
    def _put_text(fmt, delim, v, row, col):
        if "\n" in v or "\r" in v or "\0" in v:
            raise RowError(row, col, "a value may not hold a line break or a NUL byte")
        if fmt == 1:
            if "\t" in v:
                raise RowError(row, col, "a Criteo value may not hold a tab")
            return v
        if delim in v or '"' in v:
            return '"' + v.replace('"', '""') + '"'
        return v

    def _row_line(self, schema, r, row):
        fmt, delim, sep, cols, multi, index = schema
        cells = [""] * len(cols)
        for k, v in r.items():
            c = index.get(k) if isinstance(k, str) else None
            if c is None:
                raise RowError(row, str(k), "not a column of the model (its columns: " + ", ".join(cols) + ")")
            t = self._scalar_text(v)
            if t is None and multi[c] and isinstance(v, (list, tuple)):
                parts = []
                for i, x in enumerate(v):
                    p = self._scalar_text(x)
                    if p is None or x is None:
                        raise RowError(row, k, f"element {i} of a multi-valued column must be a string or number")
                    if sep in p:
                        raise RowError(row, k, f"element {i} holds the separator {sep!r}")
                    parts.append(p)
                t = sep.join(parts)
            if t is None:
                raise RowError(row, k, "expected a string, a number or None" +
                               (" (or a list of strings)" if multi[c] else "") + f", not {type(v).__name__}")
            cells[c] = self._put_text(fmt, delim, t, row, k)
        return delim.join(cells)

    def _predict_dicts(self, rows):
        h = self._handle()
        schema = self._row_schema()
        fmt, delim, cols = schema[0], schema[1], schema[3]
        lines = []
        first_line = 1
        if fmt == 2:  # a CSV model: the header first, columns by name
            lines.append(delim.join(self._put_text(fmt, delim, c, -1, c) for c in cols))
            first_line = 2
        for i, r in enumerate(rows):
            lines.append(self._row_line(schema, r, i))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        n = len(rows)
        out = np.empty(n, dtype=np.float32)
        got = ctypes.c_size_t()
        rc = ES.es_model_predict_mem(h, data, len(data), b"rows", 0, _ptr(out, ctypes.c_float), n, ctypes.byref(got))
        if rc < 0:
            msg = (ES.es_model_errmsg(h) or b"").decode("utf-8", "replace")
            # "rows:LINE:column N (NAME): reason" -> the row index and the column
            m = re.match(r"rows:(\d+):(?:column \d+ \(([^)]*)\): )?(.*)", msg, re.S)
            if m and int(m.group(1)) >= first_line:
                raise RowError(int(m.group(1)) - first_line, m.group(2) or "", m.group(3), rc)
            _check(rc, msg)
        if got.value != n:
            raise EmbstoreError(-1, f"{n} rows gave {got.value} predictions")
        return out

    def _check_rows(self, k, dense):
        _array(k, np.uint64, 2, "keys", self.n_fields)
        n = k.shape[0]
        if self.n_dense:
            if dense is None:
                raise ValueError(f"the model has {self.n_dense} numeric features: pass dense=[n, {self.n_dense}]")
            _array(dense, np.float32, 2, "dense", self.n_dense)
            if dense.shape[0] != n:
                raise ValueError(f"dense has {dense.shape[0]} rows, keys {n}")
        elif dense is not None and dense.size:
            raise ValueError("the model has no numeric features: dense must be None")
        return n

    def _batch(self, k, dense, label=None):
        """An es_batch (allocated by the library: its alignment) holding one
        key per (row, field), weight 1, the transformed dense values."""
        n, F = k.shape[0], self.n_fields
        b = es_batch()
        _check(ES.es_batch_alloc(ctypes.byref(b), n, self.n_dense, F, n * F), "es_batch_alloc failed")
        np.ctypeslib.as_array(b.val, (n * F,))[:] = k.ravel()
        np.ctypeslib.as_array(b.wt, (n * F,))[:] = 1.0
        np.ctypeslib.as_array(b.off, (n * F + 1,))[:] = np.arange(n * F + 1, dtype=np.uint32)
        np.ctypeslib.as_array(b.label, (n,))[:] = 0.0 if label is None else label
        if self.n_dense:
            np.ctypeslib.as_array(b.dense, (n * self.n_dense,))[:] = transform_num(dense).ravel()
        b.n = n
        return b

    def _predict_keys(self, k, dense):
        h = self._handle()
        n = self._check_rows(k, dense)
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        b = self._batch(k, dense)
        try:
            self._fail(ES.es_model_predict_batch(h, ctypes.byref(b), _ptr(out, ctypes.c_float)))
        finally:
            ES.es_batch_free(ctypes.byref(b))
        return out

    def train_batch(self, keys, labels, dense=None):
        """One optimisation step (es_model_train_batch) on rows given as keys
        [n, n_fields] uint64, labels float32 [n] (0/1) and dense as in
        predict(); n at most the model's batch size.  A loaded model trains
        on with a fresh optimizer state.  Returns the summed log loss before
        the step.  Writes the table in place: table() views see it."""
        h = self._handle()
        n = self._check_rows(keys, dense)
        _array(labels, np.float32, 1, "labels")
        if labels.shape[0] != n:
            raise ValueError(f"labels has {labels.shape[0]} rows, keys {n}")
        if n == 0:
            raise ValueError("train_batch() needs at least one row")
        b = self._batch(keys, dense, labels)
        loss = ctypes.c_double()
        try:
            self._fail(ES.es_model_train_batch(h, ctypes.byref(b), ctypes.byref(loss)))
        finally:
            ES.es_batch_free(ctypes.byref(b))
        return loss.value

    def _predict_path(self, path, has_label):
        """Rows of a file through the library's reader and es_model_predict_batch
        (the floats es_model_predict_file prints with 6 decimals)."""
        h = self._handle()
        p = _path(path)
        rp = ES.es_model_reader_params(h)
        rp.has_label = 1 if has_label else 0
        r = ctypes.c_void_p()
        err = es_err()
        _check(ES.es_reader_open(ctypes.byref(r), p, ctypes.byref(rp), ctypes.byref(err)), err)
        b = es_batch()
        chunks = []
        try:
            if ES.es_reader_n_fields(r) != self.n_fields or ES.es_reader_n_dense(r) != self.n_dense:
                raise EmbstoreError(-1, f"{os.fsdecode(p)}: {ES.es_reader_n_fields(r)} fields and "
                                        f"{ES.es_reader_n_dense(r)} numeric columns; the model has "
                                        f"{self.n_fields} and {self.n_dense}")
            _check(ES.es_batch_alloc(ctypes.byref(b), 4096, self.n_dense, self.n_fields, 0), "es_batch_alloc failed")
            while True:
                got = ES.es_reader_next(r, ctypes.byref(b))
                if got < 0:
                    _check(got, ES.es_reader_errmsg(r))
                if got == 0:
                    break
                out = np.empty(got, dtype=np.float32)
                self._fail(ES.es_model_predict_batch(h, ctypes.byref(b), _ptr(out, ctypes.c_float)))
                chunks.append(out)
        finally:
            ES.es_batch_free(ctypes.byref(b))
            ES.es_reader_free(r)
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.float32)

    def _predict_lines(self, lines, has_label):
        rp = ES.es_model_reader_params(self._handle())
        suffix = {1: ".tsv", 2: ".csv", 3: ".libsvm", 4: ".libffm"}.get(rp.format, ".txt")
        if rp.format == 2 and rp.delim == b"\t":
            suffix = ".tsv"
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="embstore-rows-")
        try:
            with os.fdopen(fd, "w") as f:
                for line in lines:
                    f.write(line.rstrip("\n") + "\n")
            return self._predict_path(tmp, has_label)
        finally:
            os.unlink(tmp)

    def predict_file(self, path, out=None, has_label=True, digits=None):
        """es_model_predict_file: one probability per line (6 decimals, as
        `embstore predict`; digits=N: N significant digits, 1..9, as
        `embstore predict --digits N`, 9 exact) written to `out`
        (atomically), or returned as a str when out is None.  Returns the
        row count when out is given."""
        h = self._handle()
        if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 9):
            raise ValueError(f"digits must be an integer in 1..9, not {digits!r}")
        self._fail(ES.es_model_set_predict_digits(h, digits or 0))
        rows = ctypes.c_uint64()
        if out is not None:
            self._fail(ES.es_model_predict_file(h, _path(path), int(bool(has_label)), _path(out, "out"),
                                                ctypes.byref(rows)))
            return int(rows.value)
        d = tempfile.mkdtemp(prefix="embstore-pred-")
        tmp = os.path.join(d, "pred.txt")
        try:
            self._fail(ES.es_model_predict_file(h, _path(path), int(bool(has_label)), tmp.encode(),
                                                ctypes.byref(rows)))
            with open(tmp) as f:
                return f.read()
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            os.rmdir(d)

    def evaluate(self, path):
        """Metrics on a labeled file (es_model_eval_file) as a dict."""
        m = _lib.es_metrics()
        self._fail(ES.es_model_eval_file(self._handle(), _path(path), ctypes.byref(m)))
        return _metrics(m)

    # -- embeddings --
    def _field(self, field):
        if isinstance(field, str):
            names = self.fields
            if field not in names:
                raise KeyError(f"no field {field!r}; the model's fields: {', '.join(names)}")
            return names.index(field)
        return int(field)

    def embed(self, field, values):
        """The vectors the model looks up for values of one field: float32
        [len(values), dim].  field: index or name; values: tokens (str, keyed
        like the reader does) or a uint64 array of keys."""
        h = self._handle()
        f = self._field(field)
        if isinstance(values, np.ndarray):
            k = _array(values, np.uint64, 1, "values")
        elif isinstance(values, (str, bytes)):
            k = np.array([key(values)], dtype=np.uint64)
        else:
            k = keys(list(values)).astype(np.uint64)
        out = np.empty((k.shape[0], self.dim), dtype=np.float32)
        row = ctypes.POINTER(ctypes.c_float)
        base = out.ctypes.data
        for i in range(k.shape[0]):
            self._fail(ES.es_model_embedding(h, f, int(k[i]), ctypes.cast(base + i * 4 * self.dim, row)))
        return out

    def tensors(self):
        """The storage tensors: a list of (name, dtype, shape)."""
        h = self._handle()
        out = []
        for i in range(ES.es_model_n_tensors(h)):
            out.append(self._tensor(i)[:3])
        return out

    def _tensor(self, i):
        name, dtype, nd = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_int()
        shape, data = (ctypes.c_uint64 * 4)(), ctypes.c_void_p()
        self._fail(ES.es_model_tensor(self._h, i, ctypes.byref(name), ctypes.byref(dtype), ctypes.byref(nd), shape,
                                      ctypes.byref(data)))
        return name.value.decode(), dtype.value.decode(), tuple(int(shape[d]) for d in range(nd.value)), data.value

    def table(self, name=None, writeable=False):
        """A zero-copy numpy view of a storage tensor, in the model's own
        memory (the pages mapped from the file when loaded with mmap=True;
        copy-on-write: writes never reach the file).

        name: "storage.weight" (the table of the row methods), its short
        form "weight", or any name of tensors(); None: the first float32
        2-D tensor.  A float32 table is returned as float32; a quantized
        model's table is its codes ("storage.weight.q", uint8 rows in the
        fused layout of docs/methods.md) and asking for the float table of
        a quantized model raises EmbstoreError saying so.  The view is
        read-only unless writeable=True (writes change the model's lookups).
        It keeps the model alive; Model.close() is refused while a view
        exists."""
        self._handle()
        n = ES.es_model_n_tensors(self._h)
        all_t = [self._tensor(i) for i in range(n)]
        if name is None:
            pick = [t for t in all_t if t[1] == "f32" and len(t[2]) == 2]
            if not pick:
                q = [t[0] for t in all_t if t[0].endswith(".q")]
                raise EmbstoreError(-10, "the model has no float32 table"
                                    + (f" (its table is quantized: codes in {', '.join(q)}; "
                                       f"table('{q[0]}') views the raw codes)" if q else
                                       f" (tensors: {', '.join(t[0] for t in all_t) or 'none'})"))
            t = pick[0]
        else:
            full = name if name.startswith("storage.") else "storage." + name
            match = [t for t in all_t if t[0] == full]
            if not match:
                q = [t[0] for t in all_t if t[0] == full + ".q"]
                if q:
                    raise EmbstoreError(-10, f"{full} is quantized: the model holds codes in {q[0]} (uint8, "
                                             f"fused rows); table('{q[0]}') views them, embed() decodes rows")
                raise KeyError(f"no tensor {name!r}; the model's: {', '.join(t[0] for t in all_t)}")
            t = match[0]
        tname, dtype, shape, addr = t
        npd = np.dtype(_NP_DTYPES.get(dtype, np.uint8))
        if dtype == "i4":  # two values per byte
            shape = shape[:-1] + ((shape[-1] + 1) // 2,)
        owner = _View(self, addr, shape, npd.str)
        self._views.add(owner)
        arr = np.asarray(owner)
        if not writeable:
            arr.flags.writeable = False
        return arr

    def save(self, path):
        """Write the model to path (atomically: temporary file, fsync, rename)."""
        self._fail(ES.es_model_save(self._handle(), _path(path), 0))

    def quantize(self, precision):
        """Post-training quantization in place ("fp16", "int8", ...); refused
        while table() views exist (it frees the float table)."""
        if len(self._views):
            raise RuntimeError("Model.quantize(): table views of this model are still alive; delete them first")
        err = es_err()
        _check(ES.es_model_quantize(self._handle(), precision.encode(), ctypes.byref(err)), err)

    def set_prefix(self, dim):
        """Matryoshka (train --matryoshka): score with the model at one of its
        trained prefix dimensions from now on (es_model_set_prefix); 0 or the
        model's dim: the whole model.  ValueError names the trained prefixes."""
        self._fail(ES.es_model_set_prefix(self._handle(), int(dim)))

    def slice(self, dim, path):
        """Matryoshka: write the model cut to its trained prefix dim to path
        (es_model_slice, then es_model_save: atomic); it scores the bits
        set_prefix(dim) gives."""
        h = ctypes.c_void_p()
        err = es_err()
        _check(ES.es_model_slice(self._handle(), int(dim), ctypes.byref(h), ctypes.byref(err)), err)
        try:
            rc = ES.es_model_save(h, _path(path), 0)
            if rc:
                _check(rc, ES.es_model_errmsg(h))
        finally:
            ES.es_model_free(h)

    def __repr__(self):
        return f"<embstore.Model {self.path!r} fields={self.n_fields} dense={self.n_dense} dim={self.dim}>"


# ---------------------------------------------------------------------------
# indexes
# ---------------------------------------------------------------------------
_ORDERS = {"input": 0, "random": 1, "lid_desc": 2, "lid_asc": 3}
_INDEX_ALIASES = {"M": "hnsw_m", "m": "hnsw_m", "codes": "ivf_codes", "bits": "binary_bits", "itq": "itq_iters",
                  "opq": "opq_iters"}


def _kind(v):
    if isinstance(v, int):
        return v
    out = ctypes.c_int()
    _check(ES.es_index_kind_parse(str(v).encode(), ctypes.byref(out)),
           f"unknown index kind {v!r} (flat, sq8, binary, pq, hnsw, ivf)")
    return out.value


def _metric(v):
    if isinstance(v, int):
        return v
    out = ctypes.c_int()
    _check(ES.es_metric_parse(str(v).encode(), ctypes.byref(out)), f"unknown metric {v!r} (l2, ip, cosine)")
    return out.value


class Index:
    """A vector index (es_index_*).  Index.build(x, kind=..., **options),
    Index.load(path); search(q, k) -> (distances, ids) like faiss:
    float32 [nq, k] and int64 [nq, k], best first; distances are squared L2
    (metric "l2") or inner products / cosine similarities; missing results
    are id -1.  Searches may run from several threads at once (the GIL is
    released during the C call)."""

    def __init__(self, handle):
        self._h = handle

    @classmethod
    def build(cls, x, kind="flat", metric="l2", attrs=None, **options):
        """Build an index over float32 vectors x [n, dim] (C-contiguous).
        kind: flat | sq8 | binary | pq | hnsw | ivf; metric: l2 | ip | cosine;
        options: es_index_params fields by name (hnsw_m, ef_construction,
        ef_search, order, nlist, nprobe, ivf_codes, pq_m, pq_bits,
        opq_iters, search_dim, pca, rerank, binary_bits, itq_iters,
        kmeans_iters, train_max, seed, threads) or the CLI's names (M,
        codes, bits, itq, opq).  attrs: int32 [n, n_attr] for filtered search."""
        _array(x, np.float32, 2, "x")
        p = ES.es_index_params_default()
        p.kind = _kind(kind)
        p.metric = _metric(metric)
        p.dim = x.shape[1]
        known = {n for n, _ in _lib.es_index_params._fields_} - {"kind", "metric", "dim"}
        for k, v in options.items():
            name = _INDEX_ALIASES.get(k, k)
            if name not in known:
                raise TypeError(f"Index.build() got an unknown option {k!r}; known: "
                                + ", ".join(sorted(known | set(_INDEX_ALIASES))))
            if name == "ivf_codes":
                v = _kind(v)
            elif name == "order" and isinstance(v, str):
                if v not in _ORDERS:
                    raise ValueError(f"order must be one of {sorted(_ORDERS)}")
                v = _ORDERS[v]
            setattr(p, name, int(v))
        h = ctypes.c_void_p()
        err = es_err()
        _check(ES.es_index_create(ctypes.byref(h), ctypes.byref(p), ctypes.byref(err)), err)
        ix = cls(h)
        if x.shape[0]:
            ix.add(x)
        if attrs is not None:
            ix.set_attrs(attrs)
        return ix

    @classmethod
    def load(cls, path):
        """Load an index saved by save() or `embstore index build` (mapped in place)."""
        h = ctypes.c_void_p()
        err = es_err()
        _check(ES.es_index_load(ctypes.byref(h), _path(path), ctypes.byref(err)), err)
        return cls(h)

    def _handle(self):
        if self._h is None:
            raise ValueError("the index is closed")
        return self._h

    def _fail(self, rc):
        return _check(rc, ES.es_index_errmsg(self._h))

    def add(self, x):
        """Append float32 vectors [n, dim]; they get the next ids."""
        h = self._handle()
        _array(x, np.float32, 2, "x", self.dim)
        self._fail(ES.es_index_add(h, x.shape[0], _ptr(x, ctypes.c_float)))

    def train(self, x):
        h = self._handle()
        _array(x, np.float32, 2, "x", self.dim)
        self._fail(ES.es_index_train(h, x.shape[0], _ptr(x, ctypes.c_float)))

    def set_attrs(self, attrs):
        h = self._handle()
        _array(attrs, np.int32, 2, "attrs")
        if attrs.shape[0] != len(self):
            raise ValueError(f"attrs has {attrs.shape[0]} rows, the index {len(self)} vectors")
        self._fail(ES.es_index_set_attrs(h, attrs.shape[0], attrs.shape[1], _ptr(attrs, ctypes.c_int32)))

    def search(self, queries, k=10, filter=None, out=None):
        """k nearest neighbours of each query: (distances float32 [nq, k],
        ids int64 [nq, k]).  queries: float32 [nq, dim], C-contiguous.
        filter: (attr, values) -- only vectors whose attribute attr is one
        of values.  out: optional preallocated (distances, ids) to fill."""
        h = self._handle()
        _array(queries, np.float32, 2, "queries", self.dim)
        k = int(k)
        nq = queries.shape[0]
        if out is not None:
            D, I = out
            _array(D, np.float32, 2, "out distances")
            _array(I, np.int64, 2, "out ids")
            if D.shape != (nq, k) or I.shape != (nq, k):
                raise ValueError(f"out arrays must have shape {(nq, k)}")
        else:
            D = np.empty((nq, k), dtype=np.float32)
            I = np.empty((nq, k), dtype=np.int64)
        flt = None
        if filter is not None:
            attr, values = filter
            vals = np.ascontiguousarray(np.asarray(values, dtype=np.int32).ravel())
            flt = _lib.es_filter(int(attr), vals.size, _ptr(vals, ctypes.c_int32))
        err = es_err()
        _check(ES.es_index_search_ex(h, nq, _ptr(queries, ctypes.c_float), k,
                                     ctypes.byref(flt) if flt is not None else None,
                                     _ptr(I, ctypes.c_int64), _ptr(D, ctypes.c_float), ctypes.byref(err)), err)
        return D, I

    def set(self, name, value):
        """Change a search-time parameter: ef_search, nprobe, rerank, threads."""
        self._fail(ES.es_index_set(self._handle(), name.encode(), float(value)))

    def save(self, path):
        self._fail(ES.es_index_save(self._handle(), _path(path)))

    @property
    def dim(self):
        return ES.es_index_dim(self._handle())

    @property
    def kind(self):
        return ES.es_index_kind_name(ES.es_index_params_of(self._handle()).contents.kind).decode()

    @property
    def metric(self):
        return ES.es_metric_name(ES.es_index_params_of(self._handle()).contents.metric).decode()

    @property
    def nbytes(self):
        return ES.es_index_bytes(self._handle())

    @property
    def ntotal(self):
        return len(self)

    def __len__(self):
        return ES.es_index_size(self._handle())

    def close(self):
        if self._h is not None:
            ES.es_index_free(self._h)
            self._h = None

    def __del__(self):
        h = getattr(self, "_h", None)
        if h is not None:
            ES.es_index_free(h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def __repr__(self):
        if self._h is None:
            return "<embstore.Index closed>"
        return f"<embstore.Index {self.kind} {self.metric} dim={self.dim} n={len(self)}>"


def read_vecs(path, dim=0, max_rows=0):
    """Read a vector file (.fvecs, .bvecs, .ivecs, text, raw with dim) into
    a new numpy array: float32 [n, dim] (int32 for .ivecs)."""
    p = ES.es_vec_read_params_default()
    p.dim = int(dim)
    p.max_rows = int(max_rows)
    v = _lib.es_vecs()
    err = es_err()
    _check(ES.es_vecs_read(ctypes.byref(v), _path(path), ctypes.byref(p), ctypes.byref(err)), err)
    try:
        n, d = int(v.n), int(v.dim)
        if v.x:
            return np.ctypeslib.as_array(v.x, (n, d)).copy()
        return np.ctypeslib.as_array(v.i, (n, d)).copy()
    finally:
        ES.es_vecs_free(ctypes.byref(v))


# ---------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------
def _struct_dict(s, skip=()):
    out = {}
    for name, _ in s._fields_:
        if name in skip:
            continue
        v = getattr(s, name)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, ctypes.Array):
            v = list(v)
        out[name] = v
    return out


def diagnose(x, **params):
    """Diagnostics of a set of vectors x (float32 [n, d], C-contiguous) by
    es_diag_run: singular value spectrum and effective rank, intrinsic
    dimension (TwoNN, MLE), Vendi score, dead and duplicate rows.  params:
    es_diag_params fields (k, sample, seed, top_k, dead_rel, dup_cos,
    threads).  Returns a dict {"spectrum": {..., "sv": ndarray}, "rows":
    {...}, "id": {...} or None, "id_note", "vendi" or None, "vendi_note",
    "seconds"}."""
    _array(x, np.float32, 2, "x")
    p = ES.es_diag_params_default()
    known = {n for n, _ in _lib.es_diag_params._fields_}
    for k, v in params.items():
        if k not in known:
            raise TypeError(f"diagnose() got an unknown parameter {k!r}; known: {', '.join(sorted(known))}")
        setattr(p, k, v)
    r = _lib.es_diag_report()
    err = es_err()
    _check(ES.es_diag_run(_ptr(x, ctypes.c_float), x.shape[0], x.shape[1], ctypes.byref(p), ctypes.byref(r),
                          ctypes.byref(err)), err)
    try:
        spec = _struct_dict(r.spec, skip=("sv",))
        spec["sv"] = np.ctypeslib.as_array(r.spec.sv, (r.spec.m,)).copy() if r.spec.m else np.empty(0)
        return {"spectrum": spec, "rows": _struct_dict(r.rows), "id": _struct_dict(r.id) if r.id_ok else None,
                "id_note": r.id_note.decode("utf-8", "replace"), "vendi": r.vendi if r.vendi_ok else None,
                "vendi_note": r.vendi_note.decode("utf-8", "replace"), "seconds": r.seconds}
    finally:
        ES.es_diag_report_free(ctypes.byref(r))
