import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scannet_tools import labels
from scannet_tools.labels import (
    IGNORE_ID,
    INSTANCE_NYU40_IDS,
    OTHERPROP_NYU40,
    UNKNOWN_CATEGORY_POLICIES,
    LabelTableError,
    bundled_label_table,
    find_label_table,
    nyu40_to_train_id,
    read_label_table,
    train_id_to_nyu40,
)

DATA = Path(__file__).resolve().parent / "data"


def test_hand_checked_rows_of_the_current_table():
    m = read_label_table(bundled_label_table())
    # rows read off scannetv2-labels.combined.tsv by hand: raw_category -> nyu40id
    assert m["wall"] == 1 and m["chair"] == 5 and m["office chair"] == 5
    assert m["kitchen cabinet"] == 3 and m["bathroom vanity"] == 3
    assert m["couch"] == 6 and m["doorframe"] == 8 and m["mini fridge"] == 24
    assert m["shower curtain"] == 28 and m["trash can"] == 39 and m["lamp"] == 35
    assert m["object"] == 40 and "stick" not in m


def test_old_table_still_has_stick(tmp_path):
    m = read_label_table(DATA / "scannetv2-labels-old.combined.tsv")
    assert m["stick"] == 40 and m["chair"] == 5


def test_crlf_and_double_cr_line_endings(tmp_path):
    text = "id\traw_category\tnyu40id\r\r\n1\twall\t1\r\r\n2\tchair\t5\r\n"
    p = tmp_path / "t.tsv"
    p.write_bytes(text.encode())
    assert read_label_table(p) == {"wall": 1, "chair": 5}


def test_not_a_label_table(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("a\tb\n1\t2\n")
    with pytest.raises(LabelTableError, match="not a ScanNet label table"):
        read_label_table(p)


def test_train_ids_and_out_of_range_labels():
    nyu = np.array([0, 1, 2, 3, 13, 39, 40, 50, 149, 255, 1000, -3])
    train = nyu40_to_train_id(nyu)
    assert train.tolist() == [IGNORE_ID, 0, 1, 2, IGNORE_ID, 19, IGNORE_ID, IGNORE_ID, IGNORE_ID, IGNORE_ID,
                              IGNORE_ID, IGNORE_ID]
    assert train_id_to_nyu40(np.arange(20)).tolist()[2:] == list(INSTANCE_NYU40_IDS)
    assert train_id_to_nyu40(np.array([IGNORE_ID])).tolist() == [0]


def test_label_table_found_next_to_scans(tmp_path):
    (tmp_path / "scans").mkdir()
    with pytest.raises(LabelTableError, match="--labels"):
        find_label_table(tmp_path / "scans")
    (tmp_path / "scannetv2-labels.combined.tsv").write_text("x")
    assert find_label_table(tmp_path / "scans") == tmp_path / "scannetv2-labels.combined.tsv"
    other = tmp_path / "mine.tsv"
    other.write_text("x")
    assert find_label_table(tmp_path / "scans", other) == other


def test_otherprop_is_nyu40_40_and_outside_the_benchmark():
    import csv

    with open(bundled_label_table(), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes = {int(r["nyu40id"]): r["nyu40class"] for r in rows if r["nyu40id"].strip()}
    assert classes[OTHERPROP_NYU40] == "otherprop"
    assert nyu40_to_train_id(np.array([OTHERPROP_NYU40])).tolist() == [IGNORE_ID]
    assert UNKNOWN_CATEGORY_POLICIES[0] == "error"  # the default refuses


# --------------------------------------------------------------------------- mapping values known in advance

# VALID_CLASS_IDS of the benchmark's evaluate_semantic_label.py
SEMANTIC_NYU40 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]


def test_every_benchmark_class_maps_to_its_index_and_back():
    train = nyu40_to_train_id(np.array(SEMANTIC_NYU40, np.uint8))
    assert train.dtype == np.int16 and train.tolist() == list(range(20))
    back = train_id_to_nyu40(np.arange(20, dtype=np.int16))
    assert back.dtype == np.int64 and back.tolist() == SEMANTIC_NYU40
    # every other id of 0..255 (the range of a uint8 labels.ply), and beyond, is ignored
    others = np.setdiff1d(np.arange(-5, 300), SEMANTIC_NYU40)
    assert (nyu40_to_train_id(others) == IGNORE_ID).all()


def test_mappings_keep_the_input_shape_and_ignore_out_of_range_train_ids():
    nyu = np.array([[1, 39], [0, 255], [256, -1]])
    assert nyu40_to_train_id(nyu).tolist() == [[0, 19], [IGNORE_ID, IGNORE_ID], [IGNORE_ID, IGNORE_ID]]
    train = np.array([[0, 19], [20, -1], [IGNORE_ID, 2]])
    assert train_id_to_nyu40(train).tolist() == [[1, 39], [0, 0], [0, 3]]
    assert nyu40_to_train_id(5) == 4 and train_id_to_nyu40(4) == 5  # scalars too


# --------------------------------------------------------------------------- reading tables: rows and errors

HEADER = "id\traw_category\tcategory\tnyu40id\teigen13id\n"


def _table(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "t.tsv"
    p.write_text(HEADER + body, encoding="utf-8")
    return p


def test_later_rows_win_blank_ids_are_skipped_and_other_columns_can_be_read(tmp_path):
    p = _table(tmp_path, "1\tchair\tchair\t5\t4\n2\tlamp\tlamp\t\t\n3\tbox\tbox\t \t7\n\n4\tchair\tseat\t 6 \t2\n")
    assert read_label_table(p) == {"chair": 6}
    assert read_label_table(p, label_to="eigen13id") == {"chair": 2, "box": 7}


def test_a_non_integer_id_names_file_line_column_and_value(tmp_path):
    p = _table(tmp_path, "1\twall\twall\t1\t12\n2\tchair\tchair\tfive\t4\n")
    with pytest.raises(LabelTableError) as err:
        read_label_table(p)
    assert str(err.value) == f"{p}:3: nyu40id 'five' is not an integer"


def test_missing_columns_missing_file_and_empty_table_are_one_line_errors(tmp_path):
    p = _table(tmp_path, "1\twall\twall\t1\t12\n")
    with pytest.raises(LabelTableError) as err:
        read_label_table(p, label_to="mpcat40index")
    assert str(err.value) == f"{p}: not a ScanNet label table (needs columns raw_category and mpcat40index)"
    q = tmp_path / "no_raw.tsv"
    q.write_text("id\tcategory\tnyu40id\n1\twall\t1\n")
    with pytest.raises(LabelTableError, match="needs columns raw_category and nyu40id"):
        read_label_table(q)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(LabelTableError, match="not a ScanNet label table"):
        read_label_table(empty)
    only_blank_ids = _table(tmp_path, "1\twall\twall\t\t12\n")
    with pytest.raises(LabelTableError) as err:
        read_label_table(only_blank_ids)
    assert str(err.value) == f"{only_blank_ids}: label table has no rows"
    missing = tmp_path / "absent.tsv"
    with pytest.raises(LabelTableError) as err:
        read_label_table(missing)
    assert str(err.value) == f"{missing}: cannot read label table (No such file or directory)"
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes((HEADER + "1\tcaf\xe9\tx\t1\t1\n").encode("latin-1"))
    with pytest.raises(LabelTableError) as err:  # the tables are UTF-8; another encoding is not guessed
        read_label_table(latin1)
    # the header is 43 bytes, then "1\tcaf" and the Latin-1 e acute
    assert str(err.value) == f"{latin1}: label table is not UTF-8 text (byte 0xe9 at offset 48)"


def test_bundled_table_is_the_package_data_file():
    p = bundled_label_table()
    assert p.name == "scannetv2-labels.combined.tsv" and p.parent.name == "data" and p.is_file()
    assert p.parent.parent.name == "scannet_tools"
    assert len(read_label_table(p)) == 606  # the 2018 table: 607 lines, one of them the header


def test_label_table_search_order_and_messages(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    with pytest.raises(LabelTableError) as err:
        find_label_table(scans)
    name = "scannetv2-labels.combined.tsv"
    assert str(err.value) == f"no {name} found (tried {tmp_path}/{name}, {scans}/{name}); pass --labels PATH"
    inside = scans / "scannetv2-labels.combined.tsv"
    inside.write_text("x")
    assert find_label_table(str(scans)) == inside
    beside = tmp_path / "scannetv2-labels.combined.tsv"
    beside.write_text("x")
    assert find_label_table(scans) == beside  # beside scans/ is tried first
    with pytest.raises(LabelTableError) as err:
        find_label_table(scans, tmp_path / "mine.tsv")
    assert str(err.value) == f"{tmp_path / 'mine.tsv'}: label table given with --labels does not exist"
    (tmp_path / "dir.tsv").mkdir()
    with pytest.raises(LabelTableError, match="does not exist"):
        find_label_table(scans, str(tmp_path / "dir.tsv"))  # a folder is not a table


def test_raw_categories_are_kept_verbatim_when_they_end_the_line(tmp_path):
    # only the line ends go: a raw_category in the last column keeps its trailing blank and its letters
    p = tmp_path / "t.tsv"
    p.write_bytes(b"id\tnyu40id\traw_category\r\r\n1\t5\tchair \r\r\n2\t39\tXBOX\r\n3\t1\twall")
    assert read_label_table(p) == {"chair ": 5, "XBOX": 39, "wall": 1}
    p.write_bytes(b"id\tnyu40id\traw_category\r1\t5\tchair\r\r2\t1\twall\r")  # classic Mac line ends
    assert read_label_table(p) == {"chair": 5, "wall": 1}
    p.write_bytes(b"id\tnyu40id\traw_category\n\r1\t5\tchair\n\r")  # LF CR
    assert read_label_table(p) == {"chair": 5}


def test_tables_are_read_as_utf8_whatever_the_locale(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("id\traw_category\tnyu40id\n1\tcaf\u00e9 table\t7\n", encoding="utf-8")
    # an ASCII locale with UTF-8 mode off: only an explicit encoding reads the table
    code = f"from scannet_tools.labels import read_label_table; print(read_label_table({str(p)!r}))"
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    root = Path(labels.__file__).resolve().parents[1]  # the package under test, not another install
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "{'caf\u00e9 table': 7}\n"
    assert read_label_table(p) == {"caf\u00e9 table": 7}  # and in this process, whatever its locale
