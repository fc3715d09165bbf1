"""Shared fixtures: the repository's paths, the CLI, small trained models.

Run from the repository root after `make`:
    PYTHONPATH=python /usr/bin/python3 -m pytest -q python/tests
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))  # the in-tree package unless PYTHONPATH says otherwise

CRITEO = os.path.join(ROOT, "data", "criteo_kaggle_train_first10k.tsv")
SIFT = os.path.join(ROOT, "data", "siftsmall")


def cli_path():
    return os.environ.get("ES_BIN") or os.path.join(ROOT, "build", "embstore")


def cli(*args, **kw):
    """Run the embstore CLI; returns stdout (str); fails the test on a non-zero exit."""
    r = subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        pytest.fail(f"embstore {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
    return r.stdout


@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("embstore")


@pytest.fixture(scope="session")
def rows_tail(tmp):
    """The last 500 rows of the Criteo sample (not trained on: max_rows 3000)."""
    p = tmp / "tail.tsv"
    with open(CRITEO) as f:
        lines = f.readlines()
    p.write_text("".join(lines[-500:]))
    return p


@pytest.fixture(scope="session")
def trained(tmp):
    """A small FM on hashed storage trained through embstore.train."""
    import embstore
    out = tmp / "fm.es"
    metrics = embstore.train(CRITEO, model="fm", storage="hash", budget=256 * 1024, max_rows=3000, threads=1,
                             seed=3, out=out)
    return out, metrics


@pytest.fixture(scope="session")
def sift():
    import embstore
    base = [os.path.join(SIFT, f"siftsmall_base.part{i}.fvecs") for i in (1, 2)]
    x = __import__("numpy").concatenate([embstore.read_vecs(p) for p in base])
    q = embstore.read_vecs(os.path.join(SIFT, "siftsmall_query.fvecs"))
    return base, x, q
