"""Index build/search against `embstore index search`."""
import os

import numpy as np
import pytest

import embstore
from conftest import SIFT, cli

QUERIES = os.path.join(SIFT, "siftsmall_query.fvecs")


def cli_search(index, k, *extra):
    """`embstore index search` lines 'q rank id dist' as (ids, dist-strings)."""
    ids, dist = {}, {}
    for line in cli("index", "search", index, QUERIES, "-k", k, "--threads", 1, *extra).splitlines():
        if line.startswith("query"):
            continue  # the header line
        q, r, i, d = line.split("\t")
        ids.setdefault(int(q), []).append(int(i))
        dist.setdefault(int(q), []).append(d)
    n = len(ids)
    return np.array([ids[q] for q in range(n)]), [dist[q] for q in range(n)]


def same_as_cli(D, I, index, k):
    ids, dist = cli_search(index, k)
    assert np.array_equal(I, ids)
    assert [[f"{v:.9g}" for v in row] for row in D] == dist


def test_flat_build_save_search_equals_cli(sift, tmp):
    _, x, q = sift
    ix = embstore.Index.build(x, kind="flat")
    assert len(ix) == 10000 and ix.dim == 128 and ix.kind == "flat" and ix.metric == "l2"
    path = tmp / "flat.esi"
    ix.save(path)
    D, I = ix.search(q, 10)
    assert D.shape == (100, 10) and D.dtype == np.float32 and I.dtype == np.int64
    same_as_cli(D, I, path, 10)
    D2, I2 = embstore.Index.load(path).search(q, 10)
    assert np.array_equal(D, D2) and np.array_equal(I, I2)
    # the truth: exact search agrees with numpy
    d = ((q[:5, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(np.argsort(d, axis=1, kind="stable")[:, :1], I[:5, :1])


def test_cli_built_hnsw_loaded_equals_cli(sift, tmp):
    base, _, q = sift
    path = tmp / "hnsw.esi"
    cli("index", "build", *base, "--kind", "hnsw", "--M", 16, "--threads", 1, "-o", path)
    ix = embstore.Index.load(path)
    assert ix.kind == "hnsw"
    D, I = ix.search(q, 10)
    same_as_cli(D, I, path, 10)
    ix.set("ef_search", 16)
    D16, I16 = ix.search(q, 10)
    ids, _ = cli_search(path, 10, "--ef-search", 16)
    assert np.array_equal(I16, ids)


def test_build_options_and_filter(sift):
    _, x, q = sift
    ix = embstore.Index.build(x, kind="ivf", nlist=32, nprobe=4, codes="sq8", seed=2)
    assert ix.kind == "ivf"
    D, I = ix.search(q, 5)
    assert (I >= 0).all()
    attrs = (np.arange(len(x), dtype=np.int32) % 3).reshape(-1, 1)
    fx = embstore.Index.build(x, kind="flat", attrs=attrs)
    D, I = fx.search(q, 5, filter=(0, [1]))
    assert (I % 3 == 1).all()
    with pytest.raises(TypeError, match="unknown option"):
        embstore.Index.build(x, kind="flat", nonsense=1)
