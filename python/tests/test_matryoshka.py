"""Matryoshka models from Python: train with prefixes, score at a prefix
(Model.set_prefix), cut the model (Model.slice) -- the same bits as the CLI's
--dim and the cut file."""
import numpy as np
import pytest

import embstore
from conftest import CRITEO, cli


def test_prefix_and_slice_equal_the_cli(tmp, rows_tail):
    out = tmp / "mat.es"
    embstore.train(CRITEO, model="dlrm", dim=8, matryoshka="2,4,8", storage="hash", budget=256 * 1024,
                   max_rows=3000, threads=1, seed=2, out=out)
    m = embstore.Model(out)
    assert m.meta("model.matryoshka") == "2,4,8"
    full = m.predict(rows_tail)
    m.set_prefix(4)
    p4 = m.predict(rows_tail)
    assert not np.array_equal(full, p4)
    small = tmp / "mat4.es"
    m.slice(4, small)
    assert np.array_equal(embstore.Model(small).predict(rows_tail), p4)  # bit for bit
    assert cli("predict", out, rows_tail, "--dim", 4).split() == [f"{v:.6f}" for v in p4]
    with pytest.raises(embstore.EmbstoreError, match="2,4,8"):
        m.set_prefix(3)
    with pytest.raises(embstore.EmbstoreError, match="not a trained prefix"):
        m.slice(5, tmp / "never.es")
    assert not (tmp / "never.es").exists()
    m.set_prefix(0)
    assert np.array_equal(m.predict(rows_tail), full)
