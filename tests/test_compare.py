"""``minkseg compare``: learning curves from val/*.json, seeds grouped into settings, the report
page (index.html) and its rendering in a browser, and compare_runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minkseg.viz.compare import (
    best_point,
    group_seeds,
    learning_curve,
    mean_std,
    plot_learning_curves,
    seed_summary,
    write_index_html,
    write_report,
)
from scannet_tools.labels import INSTANCE_NAMES

CONFIGS = Path(__file__).parents[1] / "configs"


def _val(run: Path, epoch: int, m_ap: float, ap50: float, miou: float, step: int | None = None) -> None:
    d = {"instance": {"mAP": m_ap, "AP50": ap50, "AP25": ap50, "per_class": {}}, "semantic": {"mIoU": miou}}
    if step is not None:
        d["step"] = step
    (run / "val").mkdir(parents=True, exist_ok=True)
    (run / "val" / f"epoch_{epoch:04d}.json").write_text(json.dumps(d))


def _metrics(m_ap: float, miou: float, ap50_of: dict[str, float] | None = None, head: str = "margin") -> dict:
    per_class = {c: {"ap": m_ap, "ap50": (ap50_of or {}).get(c, 0.5), "ap25": 0.6} for c in INSTANCE_NAMES}
    ap50 = float(np.mean([v["ap50"] for v in per_class.values()]))
    return {"instance": {"mAP": m_ap, "AP50": ap50, "AP25": 0.6, "per_class": per_class},
            "semantic": {"mIoU": miou}, "head": head}


def test_learning_curve_reads_val_files_in_epoch_order_with_their_steps(tmp_path):
    run = tmp_path / "run"
    _val(run, 20, 0.3, 0.5, 0.6, step=400)
    _val(run, 5, 0.1, 0.2, 0.4, step=100)
    (run / "val" / "notes.json").write_text("{}")  # not a validation file: ignored
    curve = learning_curve(run)
    assert [p["epoch"] for p in curve] == [5, 20] and [p["step"] for p in curve] == [100, 400]
    assert curve[1]["mAP"] == 0.3 and curve[1]["AP50"] == 0.5 and curve[1]["mIoU"] == 0.6
    assert best_point(curve, "mAP")["epoch"] == 20


def test_learning_curve_without_steps_in_the_files_uses_steps_per_epoch(tmp_path):
    run = tmp_path / "run"
    _val(run, 2, 0.1, 0.2, 0.3)
    _val(run, 4, 0.2, 0.3, 0.4)
    assert [p["step"] for p in learning_curve(run, steps_per_epoch=12.5)] == [25, 50]
    assert [p["step"] for p in learning_curve(run)] == [None, None]
    assert learning_curve(tmp_path / "no_such_run") == []


def test_a_broken_val_file_is_one_error_naming_it(tmp_path):
    run = tmp_path / "run"
    (run / "val").mkdir(parents=True)
    (run / "val" / "epoch_0003.json").write_text('{"instance": {}}')
    with pytest.raises(ValueError, match="epoch_0003.json"):
        learning_curve(run)


def test_best_point_ignores_nan_and_keeps_the_earliest_of_ties():
    curve = [{"epoch": 1, "step": 10, "mAP": float("nan")}, {"epoch": 2, "step": 20, "mAP": 0.4},
             {"epoch": 3, "step": 30, "mAP": 0.4}, {"epoch": 4, "step": 40, "mAP": 0.1}]
    assert best_point(curve, "mAP")["epoch"] == 2
    assert best_point(curve[:1], "mAP") is None and best_point([], "mAP") is None


def test_learning_curve_plot_marks_each_runs_best(tmp_path):
    curves = {"a": [{"epoch": 1, "step": 10, "mAP": 0.2, "AP50": 0.3, "mIoU": 0.5},
                    {"epoch": 2, "step": 20, "mAP": 0.1, "AP50": 0.4, "mIoU": 0.6}], "b": []}
    assert plot_learning_curves(curves, tmp_path / "c.png") and (tmp_path / "c.png").is_file()
    assert not plot_learning_curves({"a": [], "b": []}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def _config(head: str, seed: int, name: str, lr: float = 0.01) -> dict:
    return {"name": name, "runs_dir": f"/runs/{name}", "model": {"head": head, "backbone": "MinkUNet14A"},
            "train": {"seed": seed, "lr": lr}}


def test_runs_differing_only_in_name_seed_and_runs_dir_are_seeds_of_one_setting():
    configs = {"p0": _config("probabilistic", 0, "p0"), "m0": _config("margin", 0, "m0"),
               "p1": _config("probabilistic", 1, "p1"), "m1": _config("margin", 1, "m1"),
               "m_lr": _config("margin", 0, "m_lr", lr=0.1)}
    groups = group_seeds(configs)
    assert list(groups.values()) == [["p0", "p1"], ["m0", "m1"], ["m_lr"]]
    assert list(groups) == ["model.head=probabilistic, train.lr=0.01", "model.head=margin, train.lr=0.01",
                            "model.head=margin, train.lr=0.1"]
    assert group_seeds({"a": _config("margin", 0, "a"), "b": _config("margin", 3, "b")}) == {"a": ["a", "b"]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_and_sample_std_over_seeds(dtype):
    mean, std = mean_std(list(np.asarray([0.2, 0.4, 0.9], dtype)))
    assert math.isclose(mean, 0.5, rel_tol=1e-6)
    assert math.isclose(std, math.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2), rel_tol=1e-6)
    assert mean_std([dtype(0.3)])[1] != mean_std([dtype(0.3)])[1]  # one seed: no spread (NaN)
    assert mean_std([float("nan"), dtype(0.5), dtype(0.5)]) == (0.5, 0.0)  # an absent class is left out
    assert all(v != v for v in mean_std([float("nan")]))


def test_seed_summary_gives_mean_and_spread_per_setting_and_class():
    results = {"a0": _metrics(0.2, 0.5, {"chair": 0.6}), "a1": _metrics(0.4, 0.7, {"chair": 0.8}),
               "b0": _metrics(0.1, 0.3, {"chair": 0.1})}
    s = seed_summary(results, {"A": ["a0", "a1"], "B": ["b0"]})
    assert s["A"]["runs"] == ["a0", "a1"]
    assert math.isclose(s["A"]["mAP"][0], 0.3) and math.isclose(s["A"]["mAP"][1], math.sqrt(0.02))
    assert math.isclose(s["A"]["mIoU"][0], 0.6)
    assert math.isclose(s["A"]["per_class_ap50"]["chair"][0], 0.7)
    assert s["B"]["per_class_ap50"]["chair"][0] == 0.1 and s["B"]["mAP"][1] != s["B"]["mAP"][1]


def _report(out: Path) -> tuple[dict, list[str]]:
    """A report of hand-made results: two settings of two seeds each, curves, two scenes' thumbnails."""
    results = {"p0": _metrics(0.30, 0.60, {"chair": 0.9}, "probabilistic"),
               "p1": _metrics(0.40, 0.62, {"chair": 0.7}, "probabilistic"),
               "m0": _metrics(0.10, 0.50, {"chair": 0.2}), "m1": _metrics(0.20, 0.52, {"chair": 0.4})}
    groups = {"model.head=probabilistic": ["p0", "p1"], "model.head=margin": ["m0", "m1"]}
    curves = {k: [{"epoch": 1, "step": 50, "mAP": 0.05, "AP50": 0.1, "mIoU": 0.3},
                  {"epoch": 2, "step": 100, "mAP": v["instance"]["mAP"], "AP50": 0.3, "mIoU": 0.5}]
              for k, v in results.items()}
    scenes = ["scene0001_00", "scene0002_00"]
    out.mkdir(parents=True)
    write_report(results, out, scenes, curves=curves, groups=groups)
    thumbs = {}
    for s, rgb in zip(scenes, [(230, 20, 160), (20, 160, 230)]):
        (out / "thumbs").mkdir(exist_ok=True)
        Image.fromarray(np.tile(np.asarray(rgb, np.uint8), (240, 320, 1))).save(out / "thumbs" / f"{s}_gt.png")
        thumbs[s] = [("ground truth", f"thumbs/{s}_gt.png")]
    write_index_html(out, results, scenes, curves, groups, thumbs)
    return results, scenes


def test_report_has_the_seed_table_and_per_class_differences(tmp_path):
    _report(tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| model.head=probabilistic | p0, p1 | 35.0 ± 7.1 |" in md
    assert "| chair | 80.0 ± 14.1 | 30.0 ± 14.1 | -50.0 |" in md
    assert "| p0 | 2 | 30.0 (100) |" in md  # best of the curve, at its step
    for png in ("ap50_per_class.png", "ap_vs_iou.png", "learning_curves.png"):
        assert (tmp_path / "r" / png).is_file() and f"({png})" in md


def test_index_html_holds_the_tables_plots_and_scene_links(tmp_path):
    import html.parser

    _report(tmp_path / "r")
    page = (tmp_path / "r" / "index.html").read_text()
    assert "35.0 ± 7.1" in page and "-50.0" in page and "<table>" in page
    assert "http://" not in page and "https://" not in page  # self-contained: no CDN

    class Links(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.src, self.href = [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.src.append(a["src"])
            if tag == "a":
                self.href.append(a["href"])

    links = Links()
    links.feed(page)
    assert {"ap50_per_class.png", "ap_vs_iou.png", "learning_curves.png"} <= set(links.src)
    assert all((tmp_path / "r" / s).is_file() for s in links.src)  # every image is there, relative
    assert "viewer/index.html#scene=scene0001_00" in links.href
    assert "viewer/index.html#scene=scene0002_00" in links.href


def test_index_html_renders_in_a_browser_with_its_images(tmp_path):
    from tests.browser import require_chromium, screenshot

    require_chromium()
    _report(tmp_path / "r")
    page = tmp_path / "r" / "index.html"
    shot = screenshot(page, tmp_path / "shot.png", size=(1280, 4000), wait_ms=2000)
    assert (shot != 255).any(-1).mean() > 0.05  # not a blank page
    bar_blue = np.array([31, 119, 180])  # matplotlib's first colour: the bar chart and curves loaded
    assert (np.abs(shot.astype(int) - bar_blue).max(-1) <= 4).sum() > 500
    for rgb in [(230, 20, 160), (20, 160, 230)]:  # both scenes' thumbnails loaded
        assert (np.abs(shot.astype(int) - np.array(rgb)).max(-1) <= 4).sum() > 5000


def _untrained_run(runs: Path, name: str, seed: int, prepared: Path, root: Path) -> Path:
    import torch

    from minkseg.config import load_config, to_dict
    from minkseg.engine.checkpoint import save_checkpoint
    from minkseg.models.build import build_model

    cfg = load_config(CONFIGS / "synthetic_margin.yaml",
                      ["model.backbone=MinkUNet14A", f"name={name}", f"train.seed={seed}", f"runs_dir={runs}",
                       f"data.prepared={prepared}", f"data.root={root}"])
    torch.manual_seed(seed)
    run = runs / name
    run.mkdir(parents=True)
    save_checkpoint(run / "last.pth", {"model": build_model(cfg).state_dict(), "config": to_dict(cfg),
                                       "epoch": 2, "step": 30})
    _val(run, 1, 0.0, 0.0, 0.1)
    _val(run, 2, 0.01, 0.02, 0.2)
    return run


def test_compare_runs_writes_the_one_page_report(prepared_dir, raw_root, tmp_path):
    from minkseg.viz.compare import compare_runs

    runs = [_untrained_run(tmp_path / "runs", f"seed{s}", s, prepared_dir, raw_root) for s in (0, 1)]
    out = tmp_path / "report"
    results = compare_runs(runs, out, split="val", device="cpu", thumbnails=1)
    assert list(results) == ["seed0", "seed1"]
    md = (out / "report.md").read_text()
    assert "Settings over seeds" in md and "seed0, seed1" in md
    assert "| seed0 | 2 | 1.0 (30) |" in md  # best validation mAP at epoch 2 = step 2 * 30 / 2
    page = (out / "index.html").read_text()
    thumbs = sorted(p.name for p in (out / "thumbs").iterdir())
    assert len(thumbs) == 3 and all(f"thumbs/{t}" in page for t in thumbs)  # ground truth + two runs
    assert (out / "viewer" / "index.html").is_file() and "viewer/index.html#scene=" in page
