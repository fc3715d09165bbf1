"""Model.table(): zero-copy views of the model's memory."""
import ctypes

import numpy as np
import pytest

import embstore
from embstore._lib import ES


def c_pointer(m, i=0):
    data = ctypes.c_void_p()
    assert ES.es_model_tensor(m._h, i, None, None, None, None, ctypes.byref(data)) == 0
    return data.value


def test_view_is_the_c_memory(trained):
    m = embstore.Model(trained[0])  # mapped (ES_LOAD_MAP)
    assert m.tensors() == [("storage.weight", "f32", m.table().shape)]
    w = m.table()
    assert w.dtype == np.float32 and w.ndim == 2 and w.shape[1] == m.dim
    assert w.ctypes.data == c_pointer(m)  # no copy: the base address is the C pointer
    w2 = m.table("weight")
    assert np.shares_memory(w, w2)
    assert not w.flags.writeable and not w.flags.owndata


def test_write_through_numpy_is_seen_by_c(trained):
    m = embstore.Model(trained[0])
    e0 = m.embed(3, ["a", "b"])
    w = m.table(writeable=True)
    w *= 2
    assert np.array_equal(m.embed(3, ["a", "b"]), e0 * 2)
    # copy-on-write: the file is unchanged
    assert np.array_equal(embstore.Model(trained[0]).embed(3, ["a", "b"]), e0)


def test_write_through_c_is_seen_by_numpy(trained):
    m = embstore.Model(trained[0])
    w = m.table()
    before = w.copy()
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=(8, m.n_fields), dtype=np.uint64)
    dense = np.zeros((8, m.n_dense), dtype=np.float32)
    loss = m.train_batch(keys, np.ones(8, dtype=np.float32), dense)
    assert loss > 0
    changed = (w != before).any(axis=1)
    assert changed.sum() > 0  # the C update wrote the rows in place, seen by the old view


def test_view_keeps_the_model_alive_and_close_is_refused(trained):
    m = embstore.Model(trained[0])
    w = m.table()
    with pytest.raises(RuntimeError, match="views"):
        m.close()
    s = float(w.sum())
    del m  # the view holds the model
    assert float(w.sum()) == s
    m = embstore.Model(trained[0])
    v = m.table()
    del v
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.table()


def test_quantized_table_is_codes(trained, tmp):
    m = embstore.Model(trained[0])
    m.quantize("int8")
    path = tmp / "q8.es"
    m.save(path)
    q = embstore.Model(path)
    with pytest.raises(embstore.EmbstoreError, match="quantized"):
        q.table()
    with pytest.raises(embstore.EmbstoreError, match="quantized"):
        q.table("storage.weight")
    codes = q.table("storage.weight.q")
    assert codes.dtype == np.uint8 and codes.ctypes.data == c_pointer(q)
