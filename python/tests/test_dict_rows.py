"""Model.predict on rows given as dicts keyed by column name (the server's
JSON rows): the same floats as text lines, as the file, and as `embstore
predict --digits 9`; errors name the row index and the column."""
import os

import numpy as np
import pytest

import embstore
from conftest import CRITEO, ROOT, cli

MOVIELENS = os.path.join(ROOT, "data", "ml-latest-small.csv")
CRITEO_COLS = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def cli_floats(*args):
    """`embstore predict ... --digits 9`, each line read back as a float32."""
    return np.array([np.float32(v) for v in cli("predict", *args, "--digits", 9).split()], dtype=np.float32)


@pytest.fixture(scope="module")
def criteo_rows(rows_tail):
    """The 500 held-out rows without the label: text lines and dicts (every column a string)."""
    lines = ["\t".join(ln.split("\t")[1:]) for ln in rows_tail.read_text().splitlines()]
    dicts = [dict(zip(CRITEO_COLS, ln.split("\t"))) for ln in lines]
    return lines, dicts


def test_dict_rows_equal_text_rows_file_and_cli_bit_for_bit(trained, rows_tail, criteo_rows, tmp):
    m = embstore.Model(trained[0])
    lines, dicts = criteo_rows
    got = m.predict(dicts)
    assert got.dtype == np.float32 and got.shape == (500,)
    assert np.array_equal(bits(got), bits(m.predict(lines, has_label=False)))
    assert np.array_equal(bits(got), bits(m.predict(rows_tail)))  # the labeled file
    unl = tmp / "dict_unl.tsv"
    unl.write_text("\n".join(lines) + "\n")
    assert np.array_equal(bits(got), bits(cli_floats(trained[0], unl, "--unlabeled")))
    # predict_file(digits=9) is the CLI's output byte for byte
    assert m.predict_file(unl, has_label=False, digits=9) == cli("predict", trained[0], unl, "--unlabeled",
                                                                 "--digits", 9)
    assert m.predict_file(unl, has_label=False) == cli("predict", trained[0], unl, "--unlabeled")


def test_dict_values_numbers_none_and_missing_keys(trained):
    m = embstore.Model(trained[0])
    rows = [{"I1": 3, "I2": 0.25, "I3": np.int64(7), "I4": np.float32(1.5), "C1": "05db9164", "C2": None},
            {},  # every field empty
            {"C26": "abc", "I13": -2}]
    want = m.predict(["3\t0.25\t7\t1.5" + "\t" * 9 + "\t05db9164" + "\t" * 25,
                      "\t" * 38,
                      "\t" * 12 + "-2" + "\t" * 26 + "abc"], has_label=False)
    assert np.array_equal(bits(m.predict(rows)), bits(want))
    # a float is written %.17g: it reads back to the same double, as the server writes it
    x = 0.1 + 0.2
    assert np.array_equal(bits(m.predict([{"I5": x}])), bits(m.predict(["\t" * 4 + "%.17g" % x + "\t" * 34],
                                                                         has_label=False)))
    # a row's prediction does not depend on the others
    assert np.array_equal(bits(m.predict(rows[2:])), bits(want[2:]))


@pytest.mark.parametrize("row, column, reason", [
    ({"I99": 1}, "I99", "not a column of the model"),
    ({"I1": "x"}, "I1", "expected a number"),
    ({"I1": True}, "I1", "expected a string, a number or None"),
    ({"C1": ["a", "b"]}, "C1", "expected a string, a number or None"),
    ({"C1": {"a": 1}}, "C1", "expected a string, a number or None"),
    ({"C1": "a\tb"}, "C1", "may not hold a tab"),
    ({"C1": "a\nb"}, "C1", "line break"),
])
def test_dict_row_errors_name_the_row_and_column(trained, row, column, reason):
    m = embstore.Model(trained[0])
    with pytest.raises(embstore.RowError) as e:
        m.predict([{"I1": 1}, {"C2": "ok"}, row])
    assert e.value.row == 2 and e.value.column == column
    assert reason in e.value.reason
    assert str(e.value).startswith(f"row 2, column '{column}': ")
    assert isinstance(e.value, ValueError) and isinstance(e.value, embstore.EmbstoreError)
    # the model still predicts afterwards
    assert m.predict([{"I1": 1}]).shape == (1,)


def test_dict_rows_wrong_container(trained):
    m = embstore.Model(trained[0])
    with pytest.raises(TypeError, match=r"pass \[row\]"):
        m.predict({"I1": 1})
    with pytest.raises(TypeError):
        m.predict([{"I1": 1}, "a text line"])


@pytest.fixture(scope="module")
def movielens(tmp):
    out = tmp / "ml.es"
    embstore.train(MOVIELENS, columns="rating:label,userId:cat,movieId:cat,genres:multi", label_threshold=4.0,
                   model="lr", max_rows=3000, threads=1, seed=1, out=out)
    return out


def test_csv_model_dict_rows_with_multi_values_and_quoting(movielens, tmp):
    m = embstore.Model(movielens)
    with open(MOVIELENS) as f:
        lines = f.read().splitlines()[1:201]
    rows = []
    for ln in lines:
        _, u, mv, g = ln.split(",", 3)
        rows.append({"userId": int(u), "movieId": mv, "genres": g.split("|")})
    got = m.predict(rows)
    want = m.predict(["rating,userId,movieId,genres"] + lines)  # text lines: the trained spec, label included
    assert np.array_equal(bits(got), bits(want))
    # the labeled file through the CLI, every bit
    f = tmp / "ml200.csv"
    f.write_text("rating,userId,movieId,genres\n" + "\n".join(lines) + "\n")
    assert np.array_equal(bits(got), bits(cli_floats(movielens, f)))
    # a value holding the delimiter or a quote is quoted the CSV way; the
    # genres as one "A|B" string equal the list
    odd = [{"userId": 'a,"b"', "movieId": "1", "genres": "Comedy|Drama"}, {"genres": ["Comedy", "Drama"]}]
    text = ["rating,userId,movieId,genres", '0,"a,""b""",1,Comedy|Drama', "0,,,Comedy|Drama"]
    assert np.array_equal(bits(m.predict(odd)), bits(m.predict(text)))
    # multi-valued errors
    with pytest.raises(embstore.RowError) as e:
        m.predict([{"genres": ["Comedy", "A|B"]}])
    assert (e.value.row, e.value.column) == (0, "genres") and "separator" in e.value.reason
    with pytest.raises(embstore.RowError) as e:
        m.predict([{}, {"genres": ["Comedy", None]}])
    assert (e.value.row, e.value.column) == (1, "genres") and "element 1" in e.value.reason
    with pytest.raises(embstore.RowError) as e:
        m.predict([{"rating": 4}])  # the label is not an input column
    assert e.value.column == "rating" and "not a column" in e.value.reason


def test_predict_file_digits_refused(trained, rows_tail):
    m = embstore.Model(trained[0])
    for bad in (0, 10, 3.0, "9", True):
        with pytest.raises(ValueError, match="digits must be an integer in 1..9"):
            m.predict_file(rows_tail, digits=bad)
