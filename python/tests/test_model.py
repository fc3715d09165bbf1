"""train -> save -> load -> predict, against the CLI; embed; keys arrays."""
import json

import numpy as np
import pytest

import embstore
from conftest import CRITEO, cli


def cli_predictions(model, rows):
    return cli("predict", model, rows).split()


def test_train_returns_the_cli_metrics(trained, tmp):
    path, metrics = trained
    assert path.exists()
    out = cli("train", CRITEO, "--model", "fm", "--storage", "hash", "--budget", 256 * 1024, "--max-rows", 3000,
              "--threads", 1, "--seed", 3, "--quiet", "--out", tmp / "fm_cli.es")
    ref = json.loads(out.strip().splitlines()[-1])
    assert f"{metrics['valid']['auc']:.6g}" == f"{ref['auc']:.6g}"
    assert f"{metrics['valid']['logloss']:.6g}" == f"{ref['logloss']:.6g}"
    assert metrics["emb_bytes"] == ref["emb_bytes"]
    assert metrics["refit"] == ref["refit"]
    # the same settings give the same file contents' predictions
    assert cli_predictions(path, CRITEO)[:200] == cli_predictions(tmp / "fm_cli.es", CRITEO)[:200]


def test_train_in_memory_gives_the_same_model(trained, tmp):
    path, metrics = trained
    assert metrics["in_memory_bytes"] == 0
    kept = embstore.train(CRITEO, model="fm", storage="hash", budget=256 * 1024, max_rows=3000, threads=1, seed=3,
                          in_memory=1, out=tmp / "fm_mem.es")
    # 3000 Criteo rows: 26 keys of 8 bytes, 13 numbers of 4 and a label byte each
    assert kept["in_memory_bytes"] == 3000 * (26 * 8 + 13 * 4 + 1)
    assert kept["valid"] == metrics["valid"]
    assert cli_predictions(path, CRITEO)[:300] == cli_predictions(tmp / "fm_mem.es", CRITEO)[:300]


def test_save_load_predict_equals_cli(trained, rows_tail, tmp):
    path, _ = trained
    m = embstore.Model(path)
    saved = tmp / "fm_saved.es"
    m.save(saved)
    m2 = embstore.Model(saved, mmap=False)
    p = m2.predict(rows_tail)
    assert p.dtype == np.float32 and p.shape == (500,)
    ref = cli_predictions(saved, rows_tail)
    assert [f"{v:.6f}" for v in p] == ref
    assert cli_predictions(path, rows_tail) == ref  # the saved model is the trained one
    # es_model_predict_file: byte for byte the CLI's output
    assert m2.predict_file(rows_tail) == cli("predict", saved, rows_tail)
    n = m2.predict_file(rows_tail, out=tmp / "pred.txt")
    assert n == 500 and (tmp / "pred.txt").read_text().split() == ref


def test_predict_lines_and_key_arrays_equal_the_file(trained, rows_tail):
    m = embstore.Model(trained[0])
    want = m.predict(rows_tail)
    lines = rows_tail.read_text().splitlines()
    assert np.array_equal(m.predict(lines[:50]), want[:50])
    # the same rows as arrays: categorical keys and raw numeric values
    cols = [ln.split("\t") for ln in lines]
    keys = embstore.keys([c[14:40] for c in cols])
    dense = np.array([[float(v) if v else np.nan for v in c[1:14]] for c in cols], dtype=np.float32)
    assert keys.shape == (500, 26) and keys.dtype == np.uint64
    got = m.predict(keys, dense=dense)
    assert np.array_equal(got, want)  # bit for bit


def test_transform_num_is_the_librarys():
    from embstore._lib import ES
    x = np.array([0, 1, 2.5, -3, 1e6, -1e-7, 7e30, np.nan, 123456789], dtype=np.float64)
    want = np.array([ES.es_transform_num(v) for v in x], dtype=np.float32)
    assert np.array_equal(embstore.transform_num(x), want)


def test_key_is_the_readers():
    assert embstore.key("") == 0x9E3779B97F4A7C15  # ES_KEY_MISSING
    assert embstore.key("abc") == embstore.keys(["abc"])[0]


def test_embed(trained):
    m = embstore.Model(trained[0])
    e = m.embed("C1", ["68fd1e64", "05db9164", "never-seen"])
    assert e.shape == (3, m.dim) and e.dtype == np.float32
    assert np.array_equal(m.embed(0, np.array([embstore.key("68fd1e64")], dtype=np.uint64))[0], e[0])
    assert not np.array_equal(e[0], e[1])
    # the hashed table: each value's vector is one row of the table
    w = m.table()
    assert all(any(np.array_equal(r, row) for row in w) for r in e)
    with pytest.raises(KeyError, match="no field"):
        m.embed("nope", ["x"])
    with pytest.raises(embstore.EmbstoreError, match="out of range"):
        m.embed(99, ["x"])


def test_evaluate_and_metadata(trained, rows_tail):
    m = embstore.Model(trained[0])
    r = m.evaluate(rows_tail)
    assert r["rows"] == 500 and 0.5 < r["auc"] < 1
    assert m.fields[:2] == ["C1", "C2"] and m.dense_names[0] == "I1"
    assert m.n_fields == 26 and m.n_dense == 13
