from pathlib import Path

import numpy as np
import pytest

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
