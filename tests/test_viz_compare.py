"""``minkseg compare`` piece by piece, fast: run folders and labels, validation files, the report's
tables, CSV, Markdown and HTML text to the character, the plots' data (bars, curves, stars), the
thumbnails, and ``compare_runs``' wiring with evaluation, prediction and rendering stood in."""

from __future__ import annotations

import csv
import json
import math
import types
from pathlib import Path

import numpy as np
import pytest

import minkseg.viz.compare as compare
from minkseg.evaluation.metrics import OVERLAPS
from minkseg.viz.colors import instance_colors
from minkseg.viz.compare import (
    Table,
    best_point,
    group_seeds,
    learning_curve,
    plot_learning_curves,
    report_tables,
    run_checkpoint,
    run_labels,
    seed_summary,
    write_index_html,
    write_report,
)
from scannet_tools.labels import INSTANCE_NAMES
from tests.test_compare import _metrics, _val

NAN = float("nan")


# ----------------------------------------------------------------------------- runs


def test_run_checkpoint_prefers_best_then_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^{run}: no best.pth or last.pth$"):
        run_checkpoint(run)
    (run / "last.pth").write_text("")
    assert run_checkpoint(run) == run / "last.pth"
    (run / "best.pth").mkdir()  # a folder named best.pth is not a checkpoint
    assert run_checkpoint(str(run)) == run / "last.pth"
    (run / "best.pth").rmdir()
    (run / "best.pth").write_text("")
    assert run_checkpoint(run) == run / "best.pth"
    assert run_checkpoint(tmp_path / "x" / "epoch_3.pth") == tmp_path / "x" / "epoch_3.pth"  # used as is


def test_run_labels_prefix_parent_folders_only_where_names_repeat(tmp_path):
    a, b = tmp_path / "a" / "st" / "round_5", tmp_path / "b" / "st" / "round_5"
    assert run_labels([a, b, tmp_path / "c" / "seed0"]) == ["a/st/round_5", "b/st/round_5", "seed0"]
    assert run_labels([tmp_path / "runs" / "p" / "best.pth", tmp_path / "runs" / "m"]) == ["p", "m"]
    # the same run twice keeps its short name; a path that runs out of parents stops there
    assert run_labels([a, a]) == ["round_5", "round_5"]
    assert run_labels([Path("/st/round_5"), Path("/a/st/round_5")]) == ["st/round_5", "a/st/round_5"]
    assert run_labels([Path("/round_5"), Path("/a/round_5")]) == ["round_5", "a/round_5"]
    # one parent more is enough where the parents differ
    assert run_labels([Path("/a/x/round_5"), Path("/b/y/round_5")]) == ["x/round_5", "y/round_5"]


def test_learning_curve_reads_steps_or_steps_and_nan_and_sorts_epochs_numerically(tmp_path):
    run = tmp_path / "run"
    (run / "val").mkdir(parents=True)
    (run / "val" / "epoch_10.json").write_text(json.dumps(
        {"instance": {"mAP": 0.25, "AP50": None, "AP25": 0.0}, "semantic": {"mIoU": 0.5}, "steps": 41.0}))
    (run / "val" / "epoch_9.json").write_text(json.dumps(
        {"instance": {"mAP": 0.125, "AP50": 0.5}, "semantic": {"mIoU": 1}}))
    (run / "val" / "epoch_final.json").write_text("not json: the name is no epoch number")
    (run / "val" / "epoch_0x.json").write_text("neither, and listed before the others")
    curve = learning_curve(run, steps_per_epoch=2.6)
    assert [p["epoch"] for p in curve] == [9, 10]
    assert curve[0] == {"epoch": 9, "step": 23, "mAP": 0.125, "AP50": 0.5, "mIoU": 1.0}  # round(9 * 2.6)
    assert curve[1]["step"] == 41 and isinstance(curve[1]["step"], int) and curve[1]["AP50"] != curve[1]["AP50"]
    assert isinstance(curve[0]["mIoU"], float)
    assert [p["step"] for p in learning_curve(run, steps_per_epoch=0)] == [None, 41]


@pytest.mark.parametrize("text,error", [('{"instance": {}}', "KeyError: 'mAP'"), ("[1]", "TypeError: "),
                                        ("{", "JSONDecodeError: ")])
def test_a_broken_val_file_names_the_file_and_the_error(tmp_path, text, error):
    (tmp_path / "val").mkdir()
    bad = tmp_path / "val" / "epoch_0003.json"
    bad.write_text(text)
    with pytest.raises(ValueError) as e:
        learning_curve(tmp_path)
    assert str(e.value).startswith(f"{bad}: not a validation metrics file ({error}")
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_best_point_of_each_metric():
    curve = [{"epoch": 1, "a": 0.5, "b": NAN}, {"epoch": 2, "a": 0.7, "b": 0.1}, {"epoch": 3, "a": 0.7, "b": 0.2}]
    assert best_point(curve, "a")["epoch"] == 2 and best_point(curve, "b")["epoch"] == 3


# ----------------------------------------------------------------------------- seeds


def test_group_names_of_many_differing_entries_are_cut_at_three_and_kept_unique():
    configs = {"x": {"k1": 0, "k2": 0, "k3": 0, "k4": 0}, "y": {"k1": 1, "k2": 1, "k3": 1, "k4": 1},
               "z": {"k1": 0, "k2": 0, "k3": 0, "k4": 1}}
    assert group_seeds(configs) == {"k1=0, k2=0, k3=0, ...": ["x"], "k1=1, k2=1, k3=1, ...": ["y"],
                                    "k1=0, k2=0, k3=0, ... (z)": ["z"]}
    # entries missing from one setting differ too; values JSON cannot hold are compared as text
    configs = {"p": {"model": {"head": "margin"}, "data": {"root": Path("/a")}, "train": {"seed": 1}},
               "q": {"model": {"head": "margin", "extra": 2}, "data": {"root": Path("/a")}, "train": {"seed": 2}},
               "r": {"model": {"head": "margin"}, "data": {"root": Path("/a")}, "name": "r"}}
    assert group_seeds(configs) == {"model.extra=None": ["p", "r"], "model.extra=2": ["q"]}


def test_configs_with_their_entries_in_another_order_are_one_setting():
    configs = {"a": {"model": {"head": "margin", "backbone": "B"}, "train": {"seed": 0}},
               "b": {"train": {"seed": 1}, "model": {"backbone": "B", "head": "margin"}}}
    assert group_seeds(configs) == {"a": ["a", "b"]}


def test_mean_and_spread_in_float64_without_warnings():
    import warnings

    from minkseg.viz.compare import mean_std

    values = [np.float32(0.1), np.float32(0.2), np.float32(0.7)]  # float32 metrics are averaged in float64
    exact = np.asarray(values, np.float64)
    assert mean_std(values) == (float(exact.mean()), float(exact.std(ddof=1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one seed: no spread, and no "degrees of freedom" warning either
        mean, std = mean_std([0.25])
    assert mean == 0.25 and std != std


def test_seed_summary_of_ap25():
    results = {"a": _metrics(0.2, 0.5), "b": _metrics(0.4, 0.7)}
    results["b"]["instance"]["AP25"] = 0.8
    s = seed_summary(results, {"S": ["a", "b"]})
    assert s["S"]["AP25"][0] == pytest.approx(0.7) and s["S"]["AP25"][1] == pytest.approx(math.sqrt(0.02))
    assert s["S"]["AP50"] == (pytest.approx(0.5), 0.0) and s["S"]["mIoU"][0] == pytest.approx(0.6)
    assert set(s["S"]["per_class_ap50"]) == set(INSTANCE_NAMES)


# ----------------------------------------------------------------------------- tables and text


def _results() -> dict:
    p = _metrics(0.25, 0.5, {"chair": 0.75, "table": NAN}, "probabilistic")
    p["ceiling"] = {"voxel_size": 0.02, "mAP": 0.9, "AP50": 0.95, "AP25": 1.0, "mIoU": 0.875}
    m = _metrics(0.125, 0.25, {"chair": 0.5})
    m["ceiling"] = dict(p["ceiling"])
    q = _metrics(0.5, 0.75, {"chair": 0.25})
    q["ceiling"] = {"voxel_size": 0.05, "mAP": 0.5, "AP50": 0.625, "AP25": 0.75, "mIoU": 0.5}
    return {"p": p, "m": m, "q": q}


def test_report_tables_runs_ceilings_and_per_class():
    results = _results()
    main, per_class = report_tables(results)
    assert main.title == "Runs" and main.header == ["run", "head", "mAP", "AP50", "AP25", "mIoU"]
    # AP50: the mean of the classes' (NaN when one is NaN); q: (17 * 0.5 + 0.25) / 18 = 48.6 %
    assert main.rows == [["p", "probabilistic", "25.0", "-", "60.0", "50.0"],
                         ["m", "margin", "12.5", "50.0", "60.0", "25.0"],
                         ["q", "margin", "50.0", "48.6", "60.0", "75.0"],
                         ["voxelization ceiling", "2 cm voxels", "90.0", "95.0", "100.0", "87.5"],
                         ["voxelization ceiling", "5 cm voxels", "50.0", "62.5", "75.0", "50.0"]]
    assert main.note.startswith("The ceiling is the voxel oracle (minkseg/evaluation/oracle.py): each vertex")
    assert main.align_left == 2
    assert per_class.title == "AP50 per class" and per_class.header == ["class", "p", "m", "q"]
    assert per_class.align_left == 1 and per_class.note == ""
    rows = {r[0]: r[1:] for r in per_class.rows}
    assert list(rows) == list(INSTANCE_NAMES)
    assert rows["chair"] == ["75.0", "50.0", "25.0"] and rows["table"] == ["-", "50.0", "50.0"]
    no_ceiling = {"a": _metrics(0.1, 0.2)}
    no_ceiling["a"].pop("head")
    (main, _) = report_tables(no_ceiling)
    assert main.rows == [["a", "", "10.0", "50.0", "60.0", "20.0"]] and main.note == ""


def test_report_tables_curves_and_seed_settings():
    results = {"a0": _metrics(0.2, 0.5, {"chair": 0.6}), "a1": _metrics(0.4, 0.7, {"chair": 0.8}),
               "b0": _metrics(0.1, 0.3, {"chair": 0.1, "table": NAN})}
    curves = {"a0": [{"epoch": 1, "step": 7, "mAP": 0.5, "AP50": NAN, "mIoU": 0.25},
                     {"epoch": 2, "step": None, "mAP": 0.125, "AP50": NAN, "mIoU": 0.375}],
              "a1": [], "b0": [{"epoch": 3, "step": 9, "mAP": 0.0, "AP50": 0.5, "mIoU": 0.5}]}
    groups = {"A": ["a0", "a1"], "B": ["b0"]}
    tables = report_tables(results, curves, groups)
    assert [t.title for t in tables] == ["Runs", "AP50 per class", "Validation during training (best of each run)",
                                         "Settings over seeds (mean ± std)",
                                         "AP50 per class: settings (mean ± std over seeds) and differences"]
    val = tables[2]
    assert val.header == ["run", "validations", "best mAP (step)", "best AP50 (step)", "best mIoU (step)"]
    assert val.rows == [["a0", "2", "50.0 (7)", "-", "37.5 (?)"], ["a1", "0", "-", "-", "-"],
                        ["b0", "1", "0.0 (9)", "50.0 (9)", "50.0 (9)"]]
    assert val.note == "From each run's val/epoch_XXXX.json; steps are optimizer steps."
    seeds = tables[3]
    assert seeds.header == ["setting", "runs", "mAP", "AP50", "AP25", "mIoU"] and seeds.align_left == 2
    # AP50 of a0 and a1: (8.5 + 0.6) / 18 and (8.5 + 0.8) / 18, mean 51.1 %, std 0.2 / 18 / sqrt 2 = 0.8 %
    assert seeds.rows == [["A", "a0, a1", "30.0 ± 14.1", "51.1 ± 0.8", "60.0 ± 0.0", "60.0 ± 14.1"],
                          ["B", "b0", "10.0", "-", "60.0", "30.0"]]
    assert seeds.note == ("std is the sample standard deviation over the setting's runs (ddof=1); runs are seeds of "
                          "one setting when their configs are equal but for name, train.seed, runs_dir.")
    diff = tables[4]
    assert diff.header == ["class", "A", "B", "B - A"]
    rows = {r[0]: r[1:] for r in diff.rows}
    assert rows["chair"] == ["70.0 ± 14.1", "10.0", "-60.0"] and rows["table"] == ["50.0 ± 0.0", "-", "-"]
    assert rows["sofa"] == ["50.0 ± 0.0", "50.0", "+0.0"]
    assert diff.note == "Differences of the seed means, in AP50 points, against A."
    # no spread to show: no seed tables; no validation points: no curve table
    assert len(report_tables(results, {"a0": [], "a1": [], "b0": []}, {"a0": ["a0"], "a1": ["a1"], "b0": ["b0"]})) == 2
    assert [t.title for t in report_tables(results, None, {"A": ["a0", "a1", "b0"]})][2:] == [
        "Settings over seeds (mean ± std)"]  # one setting: nothing to take differences against


def test_markdown_and_html_tables_to_the_character():
    t = Table("T <1>", ["name", "x", "y"], [["a & b", "1.0", "2.0"]], note="n <b>", align_left=1)
    assert compare._md_table(t) == ["## T <1>", "", "| name | x | y |", "| --- | ---: | ---: |",
                                    "| a & b | 1.0 | 2.0 |", "", "n <b>", ""]
    assert compare._md_table(Table("U", ["a", "b"], [], align_left=2)) == ["## U", "", "| a | b |", "| --- | --- |", ""]
    assert compare._html_table(t) == ("<h2>T &lt;1&gt;</h2><table><tr><th>name</th><th>x</th><th>y</th></tr>"
                                      "<tr><td>a &amp; b</td><td class=n>1.0</td><td class=n>2.0</td></tr></table>"
                                      "<p class=note>n &lt;b&gt;</p>")
    assert compare._html_table(Table("U", ["a"], [["1"], ["2"]])) == ("<h2>U</h2><table><tr><th>a</th></tr>"
                                                                     "<tr><td>1</td></tr><tr><td>2</td></tr></table>")
    assert Table("x", [], []).extra == [] and Table("x", [], []).align_left == 1
    assert (compare._pct(NAN), compare._pct(0.12345), compare._pct(1)) == ("-", "12.3", "100.0")
    assert (compare._pm((0.5, NAN)), compare._pm((0.5, 0.0625))) == ("50.0", "50.0 ± 6.2")
    assert (compare._signed(NAN), compare._signed(0.25), compare._signed(-0.125), compare._signed(0.0)) == (
        "-", "+25.0", "-12.5", "+0.0")
    assert compare._file_part("ground truth/seed 0:a") == "ground_truth_seed_0_a"
    assert compare._file_part("a.b-c_d") == "a.b-c_d"


def test_write_report_csv_and_markdown(tmp_path, monkeypatch):
    plotted = []
    monkeypatch.setattr(compare, "_plots", lambda results, out, curves: plotted.append((results, out, curves)) or False)
    results = _results()
    results["m"].pop("head")
    write_report(results, tmp_path, ["scene0001_00", "scene0002_00"])
    assert plotted == [(results, tmp_path, {})] and plotted[0][0] is results
    rows = list(csv.reader((tmp_path / "report.csv").read_text().splitlines()))
    assert rows[0] == ["run", "head", "mAP", "AP50", "AP25", "mIoU"] + [f"AP50 {c}" for c in INSTANCE_NAMES]
    assert rows[1][:6] == ["p", "probabilistic", "0.2500", f"{results['p']['instance']['AP50']:.4f}", "0.6000",
                           "0.5000"]
    assert rows[1][6:] == ["0.5000", "0.5000", "0.7500", "0.5000", "nan"] + ["0.5000"] * 13
    assert len(rows) == 4 and rows[3][0] == "q" and rows[2][:2] == ["m", ""]  # no head recorded: empty
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Comparison on 2 scenes\n\nValues in %, as on the ScanNet benchmark page (mAP over IoU "
                         "0.50:0.05:0.90, min. region 100 vertices). The same page with scene thumbnails and the 3D "
                         "viewer: [index.html](index.html).\n\n## Runs\n")
    assert "\n".join(compare._md_table(report_tables(results)[1])) in md
    assert md.endswith("![per-class AP50](ap50_per_class.png)\n\n![AP against IoU threshold](ap_vs_iou.png)\n\n"
                       "Scenes: scene0001_00, scene0002_00\n")
    assert "learning_curves.png" not in md
    monkeypatch.setattr(compare, "_plots", lambda results, out, curves: True)
    curves = {"p": [{"epoch": 1, "step": 5, "mAP": 0.1, "AP50": 0.2, "mIoU": 0.3}], "m": [], "q": []}
    write_report(results, tmp_path, ["s"], curves=curves, groups={"G": ["p", "m"], "H": ["q"]})
    md = (tmp_path / "report.md").read_text()
    assert md.endswith("(ap_vs_iou.png)\n\n![validation learning curves](learning_curves.png)\n\nScenes: s\n")
    assert "## Validation during training (best of each run)" in md and "## Settings over seeds (mean ± std)" in md


def test_index_html_text(tmp_path):
    results = {"a": _metrics(0.5, 0.25)}
    thumbs = {"scene<1>": [("ground truth", "thumbs/s_gt.png"), ("run 'a'", "thumbs/s_a.png")]}
    write_index_html(tmp_path, results, ["scene<1>", "scene2"], {"a": []}, {"a": ["a"]}, thumbs)
    page = (tmp_path / "index.html").read_text()
    assert page.startswith("<!doctype html><html><head><meta charset=utf-8>\n<title>minkseg compare: 1 runs on 2 "
                           "scenes</title>\n<style>")
    assert ("<h1>Comparison of 1 runs on 2 scenes</h1>\n<p class=note>Values in %, as on the ScanNet benchmark page "
            "(mAP over IoU 0.50:0.05:0.90, min. region 100 vertices).</p>\n<h2>Runs</h2>") in page
    assert compare._html_table(report_tables(results)[0]) in page
    assert ("<h2>Plots</h2>\n<img class=plot id=ap50 src=ap50_per_class.png alt='AP50 per class'>\n"
            "<img class=plot id=apiou src=ap_vs_iou.png alt='AP against IoU threshold'>\n<h2>Scenes</h2>") in page
    assert "learning_curves.png" not in page
    assert ("<h2>Scenes</h2><p class=note>Instances: ground truth and each run's prediction (grey: none). "
            "Click a scene to open it in the 3D viewer.</p>") in page
    link = "viewer/index.html#scene=scene&lt;1&gt;"
    assert (f"<h3><a href='{link}'>scene&lt;1&gt;</a></h3><div class=scene><figure><a href=\"{link}\">"
            f"<img class=thumb src='thumbs/s_gt.png' alt='ground truth' width=320 height=240></a>"
            f"<figcaption>ground truth</figcaption></figure><figure><a href=\"{link}\"><img class=thumb "
            f"src='thumbs/s_a.png' alt='run &#x27;a&#x27;' width=320 height=240></a><figcaption>run &#x27;a&#x27;"
            f"</figcaption></figure></div>") in page
    assert page.endswith("<p class=note>Scenes: scene&lt;1&gt;, scene2</p></body></html>\n")
    # without the viewer: no links; with learning curves drawn: their plot
    (tmp_path / "learning_curves.png").write_bytes(b"")
    curves = {"a": [{"epoch": 1, "step": 1, "mAP": 0.1, "AP50": 0.1, "mIoU": 0.1}]}
    write_index_html(tmp_path, results, ["scene<1>"], curves, {"a": ["a"]}, thumbs, viewer=False)
    page = (tmp_path / "index.html").read_text()
    assert "<a " not in page and "Click a scene" not in page
    assert "<h2>Scenes</h2><p class=note>Instances: ground truth and each run's prediction (grey: none).</p>" in page
    assert ("<h3>scene&lt;1&gt;</h3><div class=scene><figure><img class=thumb src='thumbs/s_gt.png' "
            "alt='ground truth' width=320 height=240><figcaption>ground truth</figcaption></figure>") in page
    assert "\n<img class=plot id=curves src=learning_curves.png alt='validation learning curves'>\n" in page
    assert "<h2>Validation during training (best of each run)</h2>" in page
    two = {"a": _metrics(0.5, 0.25), "b": _metrics(0.25, 0.25)}
    write_index_html(tmp_path, two, ["s"], {"a": [], "b": []}, {"G": ["a", "b"]}, {})
    assert "<h2>Settings over seeds (mean ± std)</h2>" in (tmp_path / "index.html").read_text()
    write_index_html(tmp_path, results, [], {"a": []}, {"a": ["a"]}, {})
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Scenes</h2>" not in page and "learning_curves.png" not in page


# ----------------------------------------------------------------------------- plots


@pytest.fixture()
def figures(monkeypatch):
    """The figures the plots would save, by file name (nothing is written)."""
    import matplotlib.pyplot as plt

    saved = {}
    monkeypatch.setattr(compare, "_save", lambda fig, path: saved.__setitem__(path.name, fig))
    yield saved
    for fig in saved.values():
        plt.close(fig)


def test_ap50_bars_and_ap_against_iou(figures, tmp_path):
    results = {"a": _metrics(0.2, 0.5, {"chair": 0.75, "table": NAN}), "b": _metrics(0.1, 0.5, {"chair": 0.25}),
               "c": _metrics(0.1, 0.5)}
    ap = np.full((len(INSTANCE_NAMES), len(OVERLAPS)), NAN)
    ap[0] = np.linspace(0.0, 1.0, len(OVERLAPS))
    ap[1, :-1] = 0.5  # AP25 (the last column) absent for this class
    results["a"]["ap"] = ap
    results["b"]["ap"] = np.zeros_like(ap)
    assert compare._plots(results, tmp_path, {"a": []}) is False
    assert sorted(figures) == ["ap50_per_class.png", "ap_vs_iou.png"]
    ax = figures["ap50_per_class.png"].axes[0]
    width = 0.8 / 3
    bars = [[(p.get_x(), p.get_height(), p.get_width()) for p in c.patches] for c in ax.containers]
    chair = INSTANCE_NAMES.index("chair")
    for i, run in enumerate(bars):
        assert len(run) == 18
        for x, (left, _, w) in enumerate(run):
            assert left == pytest.approx(x + i * width - 0.4) and w == pytest.approx(width)
    assert [run[chair][1] for run in bars] == [0.75, 0.25, 0.5]
    assert bars[0][INSTANCE_NAMES.index("table")][1] == 0.0  # NaN drawn as no bar
    assert [t.get_text() for t in ax.get_xticklabels()] == list(INSTANCE_NAMES)
    assert list(ax.get_xticks()) == list(range(18))
    assert ax.get_xticklabels()[0].get_rotation() == 45 and ax.get_xticklabels()[0].get_ha() == "right"
    assert ax.get_ylim() == (0, 1) and ax.get_ylabel() == "AP50" and ax.get_title() == "AP50 per class"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    ax = figures["ap_vs_iou.png"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["a", "b"]  # run c has no AP matrix
    order = np.argsort(OVERLAPS)
    np.testing.assert_allclose(lines["a"].get_xdata(), OVERLAPS[order])
    want = [np.mean([ap[0, j], ap[1, j]]) if not np.isnan(ap[1, j]) else ap[0, j] for j in order]
    np.testing.assert_allclose(lines["a"].get_ydata(), want)
    assert lines["a"].get_marker() == "o"
    np.testing.assert_allclose(lines["b"].get_ydata(), 0.0)
    assert ax.get_xlabel() == "IoU threshold" and ax.get_ylabel() == "mean AP over classes"
    assert ax.get_ylim() == (0, 1) and ax.get_title() == "AP against the IoU threshold"
    assert ax.get_legend() is not None
    all_nan = {"a": _metrics(0.2, 0.5)}
    all_nan["a"]["ap"] = np.full_like(ap, NAN)
    figures.clear()
    compare._plots(all_nan, tmp_path, {})
    assert np.isnan(figures["ap_vs_iou.png"].axes[0].get_lines()[0].get_ydata()).all()
    figures.clear()
    compare._plots({"c": _metrics(0.1, 0.5)}, tmp_path, {})
    assert figures["ap_vs_iou.png"].axes[0].get_legend() is None  # nothing drawn, no empty legend


def test_learning_curves_plot_steps_and_stars_at_each_best(figures, tmp_path):
    curves = {"a": [{"epoch": 1, "step": 10, "mAP": 0.2, "AP50": 0.3, "mIoU": 0.5},
                    {"epoch": 2, "step": 20, "mAP": 0.1, "AP50": 0.4, "mIoU": NAN}],
              "empty": [], "b": [{"epoch": 1, "step": 5, "mAP": 0.4, "AP50": 0.4, "mIoU": 0.4}]}
    assert plot_learning_curves(curves, tmp_path / "c.png") is True
    fig = figures["c.png"]
    assert len(fig.axes) == 3 and fig.get_size_inches().tolist() == pytest.approx([12.6, 3.6])
    for ax, metric in zip(fig.axes, ("mAP", "AP50", "mIoU")):
        assert ax.get_title() == f"validation {metric} (star: best)" and ax.get_xlabel() == "training steps"
        assert ax.get_ylim() == (0, 1)
        lines = ax.get_lines()
        assert len(lines) == 4  # a curve and a star per non-empty run
        curve_a, star_a, curve_b, star_b = lines
        assert curve_a.get_xdata().tolist() == [10, 20] and curve_a.get_color() == "C0" and curve_a.get_label() == "a"
        np.testing.assert_array_equal(curve_a.get_ydata(), [p[metric] for p in curves["a"]])
        assert curve_b.get_color() == "C2" and curve_b.get_xdata().tolist() == [5]  # colours follow the run order
        best = best_point(curves["a"], metric)
        assert star_a.get_marker() == "*" and star_a.get_linestyle() == "None" and star_a.get_color() == "C0"
        assert star_a.get_xdata().tolist() == [best["step"]] and star_a.get_ydata().tolist() == [best[metric]]
        assert star_a.get_markeredgecolor() == "black" and star_b.get_ydata().tolist() == [0.4]
        assert curve_a.get_marker() == "o"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]
    # one point without a step: every run is drawn against epochs
    curves["b"][0]["step"] = None
    figures.clear()
    plot_learning_curves(curves, tmp_path / "c.png")
    ax = figures["c.png"].axes[0]
    assert ax.get_xlabel() == "epochs" and ax.get_lines()[0].get_xdata().tolist() == [1, 2]
    assert ax.get_lines()[1].get_xdata().tolist() == [1]  # a's best mAP: epoch 1
    figures.clear()
    nan_only = {"n": [{"epoch": 1, "step": 1, "mAP": NAN, "AP50": NAN, "mIoU": NAN}]}
    assert plot_learning_curves(nan_only, tmp_path / "n.png") and len(figures["n.png"].axes[0].get_lines()) == 1


def test_save_writes_a_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(2, 1))
    compare._save(fig, tmp_path / "f.png")
    assert not plt.fignum_exists(fig.number)
    with Image.open(tmp_path / "f.png") as img:
        assert img.format == "PNG" and img.size == (200, 100)  # 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


# ----------------------------------------------------------------------------- thumbnails


def test_render_thumbnails_writes_each_colouring_and_skips_scenes_that_fail(tmp_path, monkeypatch, capsys):
    import minkseg.viz.render as render

    calls = []

    def render_views(xyz, faces, colourings, size):
        calls.append((xyz, faces, size))
        if len(xyz) == 1:
            raise RuntimeError("offscreen rendering failed: no GL")
        return [np.tile(c[:1][None], (size[1], size[0], 1)) for c in colourings]

    monkeypatch.setattr(render, "render_views", render_views)
    red, blue = np.array([[200, 0, 0]] * 2, np.uint8), np.array([[0, 0, 200]] * 2, np.uint8)
    scenes = {"s1": {"xyz": np.zeros((2, 3)), "faces": None, "colours": {"ground truth": red, "run/a b": blue}},
              "s2": {"xyz": np.zeros((1, 3)), "faces": "F", "colours": {"ground truth": red[:1]}}}
    written = compare.render_thumbnails(scenes, tmp_path / "thumbs")
    assert written == {"s1": [("ground truth", "thumbs/s1_ground_truth.png"), ("run/a b", "thumbs/s1_run_a_b.png")]}
    assert [c[2] for c in calls] == [(320, 240), (320, 240)] and calls[1][1] == "F"
    from PIL import Image

    with Image.open(tmp_path / "thumbs" / "s1_run_a_b.png") as img:
        assert img.size == (320, 240) and img.getpixel((5, 5)) == (0, 0, 200)
    assert capsys.readouterr().err == "warning: no thumbnails of s2 (offscreen rendering failed: no GL)\n"
    assert compare.render_thumbnails({"s2": scenes["s2"]}, tmp_path / "none") == {}
    assert not (tmp_path / "none").exists()


def test_thumb_scene_uses_the_raw_mesh_only_when_its_vertices_match(raw_root, prepared_dir):
    from scannet_tools.prepare import load_prepared, prepared_path
    from scannet_tools.reader import read_scene

    scene = load_prepared(prepared_path(prepared_dir, "scene0000_00"))
    entry = compare._thumb_scene(scene, raw_root)
    raw = read_scene(raw_root / "scans" / "scene0000_00", annotations=False)
    np.testing.assert_array_equal(entry["faces"], raw.faces)
    assert entry["xyz"] is scene["xyz"]
    np.testing.assert_array_equal(entry["colours"]["ground truth"],
                                  instance_colors(scene["instance"].astype(np.int64) - 1))
    assert list(entry["colours"]) == ["ground truth"]
    fewer = dict(scene, xyz=scene["xyz"][:-1])
    assert compare._thumb_scene(fewer, raw_root)["faces"] is None
    assert compare._thumb_scene(scene, raw_root / "elsewhere")["faces"] is None


def test_thumb_scene_of_an_unreadable_scan_draws_points(tmp_path, prepared_dir):
    from scannet_tools.prepare import load_prepared, prepared_path

    scene = load_prepared(prepared_path(prepared_dir, "scene0000_00"))
    (tmp_path / "scans" / "scene0000_00").mkdir(parents=True)  # a scan folder without a mesh
    assert compare._thumb_scene(scene, tmp_path)["faces"] is None


# ----------------------------------------------------------------------------- compare_runs


def test_compare_runs_wiring(tmp_path, monkeypatch):
    """Two runs (one checkpoint, one run folder): each evaluated on the first run's scenes, the
    ceiling computed once per voxel size, thumbnails of the first scenes, the viewer for them."""
    import minkseg.data.splits as splits
    import minkseg.engine.checkpoint as checkpoint
    import minkseg.evaluation.model_eval as model_eval
    import minkseg.evaluation.oracle as oracle
    import minkseg.inference.predict as predict
    import minkseg.viz.view as view
    import scannet_tools.prepare as prepare
    from minkseg.config import load_config, to_dict

    log = []
    run_a = tmp_path / "runs" / "a"
    run_b = tmp_path / "runs" / "b"
    for run in (run_a, run_b):
        run.mkdir(parents=True)
        _val(run, 2, 0.1, 0.2, 0.3)
    (run_a / "best.pth").write_text("")
    (run_b / "last.pth").write_text("")

    def load_checkpoint(path, device, tuned=True):
        cfg = load_config(None, [f"train.seed={0 if path.parent == run_a else 1}", "data.voxel_size=0.05",
                                 "data.prepared=P", "data.root=R"])
        log.append(("load", path.name, path.parent.name, str(device), tuned))
        state = {"config": to_dict(cfg), "epoch": 4, "step": 10} if path.parent == run_a else {"config": to_dict(cfg)}
        return types.SimpleNamespace(name=path.parent.name), cfg, state

    def split_scenes(cfg, split):
        log.append(("split", split))
        return ["s1", "s2", "s3"] if split == "val" else ["t1"]

    def evaluate_model(model, cfg, scenes, device, progress, ap_matrix):
        log.append(("eval", model.name, tuple(scenes), cfg.data.prepared, cfg.data.root, progress, ap_matrix))
        m = _metrics(0.5 if model.name == "a" else 0.25, 0.5)
        m["ap"] = np.zeros((18, len(OVERLAPS)))
        return m

    def prepared_ceiling(prepared, scenes, voxel_size):
        log.append(("ceiling", prepared, tuple(scenes), voxel_size))
        return {"voxel_size": voxel_size, "mAP": 1.0, "AP50": 1.0, "AP25": 1.0, "mIoU": 1.0}

    def load_prepared(path):
        n = 4
        return {"scene": Path(path).stem, "xyz": np.zeros((n, 3), np.float32), "instance": np.array([1, 1, 2, -1])}

    def predict_scene(model, scene, cfg, device):
        log.append(("predict", model.name, scene["scene"]))
        from minkseg.inference.instances import InstancePrediction

        masks = [np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])]
        return types.SimpleNamespace(instances=[InstancePrediction(masks[0], 5, 0.25),
                                                InstancePrediction(masks[1], 7, 0.75)])

    rendered = {}
    monkeypatch.setattr(checkpoint, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(splits, "split_scenes", split_scenes)
    monkeypatch.setattr(model_eval, "evaluate_model", evaluate_model)
    monkeypatch.setattr(oracle, "prepared_ceiling", prepared_ceiling)
    monkeypatch.setattr(prepare, "load_prepared", load_prepared)
    monkeypatch.setattr(predict, "predict_scene", predict_scene)
    monkeypatch.setattr(compare, "render_thumbnails", lambda scenes, out: rendered.update(scenes, out=out) or {})
    monkeypatch.setattr(compare, "_plots", lambda results, out, curves: False)
    monkeypatch.setattr(view, "export_viewer", lambda *a, **k: log.append(("viewer", a, k)))
    out = tmp_path / "out" / "report"
    results = compare.compare_runs([run_a / "best.pth", run_b], out, split=None, prepared="PP", root="RR",
                                   device="cpu", tuned=False, thumbnails=2)
    assert list(results) == ["a", "b"]
    assert [e for e in log if e[0] == "load"] == [("load", "best.pth", "a", "cpu", False),
                                                 ("load", "last.pth", "b", "cpu", False)]
    assert [e for e in log if e[0] == "split"] == [("split", "val"), ("split", "val")]
    assert [e for e in log if e[0] == "eval"] == [("eval", "a", ("s1", "s2", "s3"), "PP", "RR", True, True),
                                                 ("eval", "b", ("s1", "s2", "s3"), "PP", "RR", True, True)]
    assert [e for e in log if e[0] == "ceiling"] == [("ceiling", "PP", ("s1", "s2", "s3"), 0.05)]
    assert [e[1:] for e in log if e[0] == "predict"] == [("a", "s1"), ("a", "s2"), ("b", "s1"), ("b", "s2")]
    assert results["a"]["head"] == "probabilistic" and results["b"]["ceiling"]["voxel_size"] == 0.05
    saved = json.loads((out / "a.json").read_text())
    assert set(saved) == {"instance", "semantic", "ceiling"} and saved["instance"]["mAP"] == 0.5
    # thumbnails: ground truth, then each run's instances, most confident on top
    assert list(rendered) == ["s1", "s2", "out"] and rendered["out"] == out / "thumbs"
    assert list(rendered["s1"]["colours"]) == ["ground truth", "a", "b"]
    np.testing.assert_array_equal(rendered["s1"]["colours"]["a"], instance_colors(np.array([0, 1, 1, -1])))
    np.testing.assert_array_equal(rendered["s1"]["colours"]["ground truth"], instance_colors(np.array([0, 0, 1, -2])))
    ((_, args, kwargs),) = [e for e in log if e[0] == "viewer"]
    assert args == ([run_a / "best.pth", run_b], out / "viewer")
    assert kwargs == {"scenes": ["s1", "s2"], "split": "val", "device": "cpu", "prepared": Path("PP"),
                      "root": Path("RR"), "tuned": False}
    md = (out / "report.md").read_text()
    assert md.startswith("# Comparison on 3 scenes") and "| a | 1 | 10.0 (5) |" in md  # step 2 * 10 / 4
    assert "| b | 1 | 10.0 (?) |" in md  # no step in b's checkpoint: unknown
    assert "Settings over seeds" in md and "a, b" in md  # seeds of one setting
    page = (out / "index.html").read_text()
    assert "Comparison of 2 runs on 3 scenes" in page and "<h2>Scenes</h2>" not in page
    assert "<h2>Settings over seeds (mean ± std)</h2>" in page


def test_compare_runs_without_thumbnails_or_viewer(tmp_path, monkeypatch):
    import minkseg.data.splits as splits
    import minkseg.engine.checkpoint as checkpoint
    import minkseg.evaluation.model_eval as model_eval
    import minkseg.evaluation.oracle as oracle
    import minkseg.viz.view as view
    from minkseg.config import load_config, to_dict

    cfg = load_config(None, ["data.voxel_size=0.1", "data.val_split=valX"])
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pth").write_text("")
    splits_asked = []
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p, d, tuned=True: (None, cfg, {"config": to_dict(cfg)}))
    monkeypatch.setattr(splits, "split_scenes", lambda c, s: splits_asked.append(s) or ["s1"])
    monkeypatch.setattr(model_eval, "evaluate_model", lambda *a, **k: _metrics(0.1, 0.2))
    monkeypatch.setattr(oracle, "prepared_ceiling", lambda p, s, v: {"voxel_size": v, "mAP": 1.0, "AP50": 1.0,
                                                                     "AP25": 1.0, "mIoU": 1.0})
    monkeypatch.setattr(compare, "_plots", lambda results, out, curves: False)
    monkeypatch.setattr(view, "export_viewer", lambda *a, **k: pytest.fail("no viewer without thumbnails"))
    results = compare.compare_runs([run], tmp_path / "o", device="cpu", thumbnails=0)
    assert splits_asked == ["valX"] and results["r"]["ceiling"]["voxel_size"] == 0.1
    assert "Click a scene" not in (tmp_path / "o" / "index.html").read_text()


def test_compare_runs_defaults_and_each_runs_own_data(tmp_path, monkeypatch):
    """Defaults: the "auto" device, tuned thresholds, thumbnails of the first 4 scenes. Without
    --prepared/--root each run keeps its own data folders, so runs on different data are different
    settings (not seeds of one)."""
    import minkseg.data.splits as splits
    import minkseg.device as device_module
    import minkseg.engine.checkpoint as checkpoint
    import minkseg.evaluation.model_eval as model_eval
    import minkseg.evaluation.oracle as oracle
    import minkseg.inference.predict as predict
    import minkseg.viz.view as view
    import scannet_tools.prepare as prepare
    from minkseg.config import load_config, to_dict

    log = []
    runs = []
    for name in ("x", "y", "z"):
        run = tmp_path / name
        run.mkdir()
        (run / "last.pth").write_text("")
        _val(run, 2, 0.1, 0.2, 0.3)
        runs.append(run)

    def load_checkpoint(path, device, tuned=True):
        name = path.parent.name
        log.append(("load", name, device, tuned))
        # y has the default folders, x another prepared folder, z another raw root
        own = {"x": [f"data.prepared=/data/{name}"], "y": [], "z": [f"data.root=/data/{name}"]}[name]
        cfg = load_config(None, [*own, "data.voxel_size=0.1"])
        return name, cfg, {"config": to_dict(cfg), "epoch": 3}  # an epoch but no step count

    monkeypatch.setattr(device_module, "resolve_device", lambda spec: log.append(("device", spec)) or "DEV")
    monkeypatch.setattr(checkpoint, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(splits, "split_scenes", lambda cfg, split: log.append(("split", cfg.data.voxel_size, split))
                        or [f"s{i}" for i in range(6)])
    monkeypatch.setattr(model_eval, "evaluate_model", lambda model, cfg, scenes, device, **kw:
                        log.append(("eval", model, device)) or _metrics(0.1, 0.2))
    monkeypatch.setattr(oracle, "prepared_ceiling", lambda p, s, v: {"voxel_size": v, "mAP": 1.0, "AP50": 1.0,
                                                                     "AP25": 1.0, "mIoU": 1.0})
    monkeypatch.setattr(prepare, "load_prepared", lambda path: {"scene": Path(path).stem, "xyz": np.zeros((2, 3)),
                                                                "instance": np.array([1, -1])})
    monkeypatch.setattr(predict, "predict_scene", lambda model, scene, cfg, device:
                        log.append(("predict", model, scene["scene"], device, cfg.data.voxel_size))
                        or types.SimpleNamespace(instances=[]))
    monkeypatch.setattr(compare, "render_thumbnails", lambda scenes, out: log.append(("thumbs", list(scenes)))
                        or {"s0": [("ground truth", "thumbs/s0_ground_truth.png")]})
    monkeypatch.setattr(compare, "_plots", lambda results, out, curves: False)
    monkeypatch.setattr(view, "export_viewer", lambda sources, out, **kw: log.append(("viewer", kw["device"],
                                                                                      kw["prepared"], kw["root"])))
    out = tmp_path / "out"
    out.mkdir()  # an existing report folder is reused
    (out / "old.txt").write_text("kept")
    compare.compare_runs(runs, out)
    assert log[0] == ("device", "auto")
    assert [e for e in log if e[0] == "load"] == [("load", m, "DEV", True) for m in "xyz"]
    assert [e for e in log if e[0] == "split"] == [("split", 0.1, "val")] * 3
    assert [e for e in log if e[0] == "eval"] == [("eval", m, "DEV") for m in "xyz"]
    assert [e[1:] for e in log if e[0] == "predict"] == [(m, f"s{i}", "DEV", 0.1) for m in "xyz" for i in range(4)]
    assert [e for e in log if e[0] == "thumbs"] == [("thumbs", ["s0", "s1", "s2", "s3"])]
    assert [e for e in log if e[0] == "viewer"] == [("viewer", "DEV", None, None)]
    md = (out / "report.md").read_text()
    assert "Settings over seeds" not in md  # different data folders: three settings of one run each
    assert "| x | 1 | 10.0 (?) |" in md  # an epoch without a step count: the step is unknown
    assert (out / "old.txt").read_text() == "kept"
    page = (out / "index.html").read_text()
    assert "<h2>Validation during training (best of each run)</h2>" in page  # the curves reach the page
    assert "<h2>Scenes</h2>" in page and "Click a scene to open it in the 3D viewer." in page
    assert "<a href='viewer/index.html#scene=s0'>s0</a>" in page
    log.clear()
    compare.compare_runs(runs, out, viewer=False)  # thumbnails without the viewer: no links
    page = (out / "index.html").read_text()
    assert "<h2>Scenes</h2>" in page and "Click a scene" not in page and "viewer/index.html" not in page
    assert not [e for e in log if e[0] == "viewer"]
