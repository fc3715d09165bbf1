"""Every error path: Python-side array checks, and C errors carrying the C message."""
import numpy as np
import pytest

import embstore
from conftest import CRITEO


@pytest.fixture(scope="module")
def index():
    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    return embstore.Index.build(x)


def test_bad_dtype(index, trained):
    with pytest.raises(TypeError, match="float32"):
        index.search(np.zeros((2, 8), dtype=np.float64), 3)
    with pytest.raises(TypeError, match="float32"):
        embstore.Index.build(np.zeros((4, 8), dtype=np.int32))
    with pytest.raises(TypeError, match="uint64"):
        embstore.Model(trained[0]).predict(np.zeros((2, 26), dtype=np.int64), dense=np.zeros((2, 13), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        index.search([[0.0] * 8], 3)
    with pytest.raises(TypeError, match="float32"):
        embstore.diagnose(np.zeros((10, 3)))


def test_non_contiguous(index):
    q = np.zeros((4, 16), dtype=np.float32)[:, ::2]
    assert q.shape == (4, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        index.search(q, 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        index.search(np.asfortranarray(np.zeros((4, 8), dtype=np.float32)), 3)


def test_wrong_shape(index, trained):
    with pytest.raises(ValueError, match="columns, expected 8"):
        index.search(np.zeros((2, 7), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="2-D"):
        index.search(np.zeros(8, dtype=np.float32), 3)
    m = embstore.Model(trained[0])
    with pytest.raises(ValueError, match="expected 26"):
        m.predict(np.zeros((2, 25), dtype=np.uint64), dense=np.zeros((2, 13), np.float32))
    with pytest.raises(ValueError, match="numeric features"):
        m.predict(np.zeros((2, 26), dtype=np.uint64))


def test_missing_files_carry_the_c_message(tmp, trained):
    missing = str(tmp / "no-such-file.es")
    with pytest.raises(embstore.EmbstoreError) as e:
        embstore.Model(missing)
    assert "no-such-file.es" in e.value.msg and e.value.code < 0
    assert e.value.code_name in ("ENOTFOUND", "EIO")
    with pytest.raises(embstore.EmbstoreError, match="no-such-file.es"):
        embstore.Index.load(missing)
    with pytest.raises(embstore.EmbstoreError, match="no-such-file.tsv"):
        embstore.train(str(tmp / "no-such-file.tsv"))
    with pytest.raises(embstore.EmbstoreError, match="no-such-file.tsv"):
        embstore.Model(trained[0]).predict(str(tmp / "no-such-file.tsv"))
    with pytest.raises(embstore.EmbstoreError, match="no-such-file.fvecs"):
        embstore.read_vecs(str(tmp / "no-such-file.fvecs"))


def test_c_errors_carry_the_c_message(index, tmp):
    with pytest.raises(embstore.EmbstoreError) as e:
        index.search(np.zeros((1, 8), dtype=np.float32), 1000)  # k larger than the index
    assert e.value.code == -1 and "k" in e.value.msg
    with pytest.raises(embstore.EmbstoreError, match="nonsense"):
        embstore.train(CRITEO, model="nonsense", max_rows=100)
    with pytest.raises(embstore.EmbstoreError):
        index.set("no_such_parameter", 1)
    with pytest.raises(embstore.EmbstoreError, match="kind"):
        embstore.Index.build(np.zeros((4, 8), np.float32), kind="nope")
    bad = tmp / "garbage.es"
    bad.write_bytes(b"not an embstore file at all" * 10)
    with pytest.raises(embstore.EmbstoreError) as e:
        embstore.Model(bad)
    assert e.value.code_name == "EFORMAT" and "garbage.es" in e.value.msg
    with pytest.raises(TypeError, match="unknown flag"):
        embstore.train(CRITEO, no_such_flag=1)
