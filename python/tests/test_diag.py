"""embstore.diagnose over es_diag_run."""
import numpy as np

import embstore


def test_diagnose_low_rank():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 3)) @ rng.standard_normal((3, 16))).astype(np.float32)
    r = embstore.diagnose(x, k=10, seed=2)
    s = r["spectrum"]
    assert s["m"] == 16 and s["rank"] == 3 and s["sv"].shape == (16,)
    np.testing.assert_allclose(s["sv"][:3], np.linalg.svd(x.astype(np.float64), compute_uv=False)[:3], rtol=1e-6)
    assert r["rows"]["n"] == 500 and r["rows"]["dead"] == 0
    assert r["id"] is not None and 2 < r["id"]["twonn"] < 4.5
    assert r["vendi"] is not None and r["seconds"] >= 0


def test_diagnose_error_message():
    x = np.zeros((5, 4), dtype=np.float32)
    x[2, 1] = np.nan
    try:
        embstore.diagnose(x)
    except embstore.EmbstoreError as e:
        assert "row 2" in e.msg or "2" in e.msg
    else:
        raise AssertionError("NaN accepted")
