"""``evaluate_model``'s wiring: prepared files read in order, predictions matched against the
prepared ground truth, ranks' records gathered back into scene order, the progress bar and the
device; the model's predictions are replaced by hand-made ones whose metrics are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

import minkseg.evaluation.model_eval as model_eval
from minkseg.evaluation.evaluate import summarize_matches
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.predict import ScenePrediction

CHAIR, TABLE, WALL, FLOOR = 5, 7, 1, 2


def _runs(*parts: tuple[int, int]) -> np.ndarray:
    return np.concatenate([np.full(n, v, np.int64) for v, n in parts])


# prepared scenes (nyu40 stored as uint8, instance -1 outside instances) and the predictions made for them
SCENES = {
    "s0": {"nyu40": _runs((CHAIR, 150), (WALL, 50)), "instance": _runs((0, 150), (-1, 50))},
    "s1": {"nyu40": _runs((TABLE, 240), (FLOOR, 30)), "instance": _runs((0, 240), (-1, 30))},
    "s2": {"nyu40": _runs((CHAIR, 100), (TABLE, 100)), "instance": _runs((0, 100), (1, 100))},
}
PREDICTIONS = {
    "s0": (_runs((CHAIR, 150), (WALL, 50)), [(_runs((1, 150), (0, 50)), CHAIR, 0.9)]),
    # half the table (IoU 0.5: a match at 0.25 only); every vertex called table
    "s1": (_runs((TABLE, 270)), [(_runs((1, 120), (0, 150)), TABLE, 0.6)]),
    "s2": (_runs((CHAIR, 100), (TABLE, 100)), [(_runs((1, 100), (0, 100)), CHAIR, 0.8),
                                               (_runs((0, 100), (1, 100)), TABLE, 0.7)]),
}


@pytest.fixture
def fake_model(monkeypatch):
    """Prepared scenes served from SCENES, predictions from PREDICTIONS; records every call."""
    import tqdm

    calls = {"read": [], "predict": [], "bar": []}

    def iterate_prepared(files, workers):
        calls["read"].append(([f.name for f in files], workers))
        return iter([{"scene": f.name.split(".")[0], "nyu40": SCENES[f.name.split(".")[0]]["nyu40"].astype(np.uint8),
                      "instance": SCENES[f.name.split(".")[0]]["instance"].astype(np.int32)} for f in files])

    def predict_scene(model, scene, cfg, device):
        calls["predict"].append((model, scene["scene"], device))
        semantic, masks = PREDICTIONS[scene["scene"]]
        return ScenePrediction(scene["scene"], semantic, [InstancePrediction(*m) for m in masks])

    def bar(iterable, **kwargs):
        calls["bar"].append(kwargs)
        return iterable

    monkeypatch.setattr(model_eval, "iterate_prepared", iterate_prepared)
    monkeypatch.setattr(model_eval, "predict_scene", predict_scene)
    monkeypatch.setattr(model_eval, "tqdm", bar)
    monkeypatch.setattr(tqdm, "tqdm", bar)
    return calls


class _Cfg:
    class data:  # noqa: N801 -- mirrors cfg.data.prepared
        prepared = "/prepared"


def _check_hand_metrics(m: dict) -> None:
    # chair: both found at every threshold; table: s1's half table is a match only at 0.25; above, it is
    # a false positive (0.6) below s2's table (0.7) with s1's table missed: precision 1 at recall 1/2, AP 0.5
    assert m["instance"]["per_class"]["chair"] == {"ap": 1.0, "ap50": 1.0, "ap25": 1.0}
    assert m["instance"]["per_class"]["table"] == pytest.approx({"ap": 0.5, "ap50": 0.5, "ap25": 1.0}, abs=1e-12)
    assert (m["instance"]["mAP"], m["instance"]["AP50"], m["instance"]["AP25"]) == pytest.approx((0.75, 0.75, 1.0))
    # semantic: chair and wall right; table 340 of 370 (s1's floor called table); floor 0 of 30
    sem = m["semantic"]["per_class"]
    assert (sem["chair"], sem["wall"], sem["table"], sem["floor"]) == pytest.approx((1.0, 1.0, 34 / 37, 0.0))
    assert m["semantic"]["mIoU"] == pytest.approx((2 + 34 / 37) / 4, abs=1e-12)


def test_metrics_of_hand_made_predictions(fake_model):
    m = model_eval.evaluate_model("model", _Cfg, ["s0", "s1", "s2"])
    _check_hand_metrics(m)
    assert "ap" not in m
    assert fake_model["read"] == [(["s0.npz", "s1.npz", "s2.npz"], 0)]
    assert fake_model["predict"] == [("model", "s0", "cpu"), ("model", "s1", "cpu"), ("model", "s2", "cpu")]
    assert fake_model["bar"] == [{"total": 3, "desc": "evaluate", "unit": "scene", "disable": True}]
    m = model_eval.evaluate_model("model", _Cfg, ["s2"], "cuda:1", progress=True, ap_matrix=True, workers=2)
    assert m["ap"].shape == (18, 10) and m["instance"]["AP50"] == 1.0
    assert fake_model["read"][-1] == (["s2.npz"], 2) and fake_model["predict"][-1] == ("model", "s2", "cuda:1")
    assert fake_model["bar"][-1]["disable"] is None  # None: tqdm shows the bar on a terminal only


def test_ranks_predict_their_share_and_gather_in_scene_order(fake_model, monkeypatch):
    from minkseg.engine import distributed

    gathered_from_rank_1 = []
    seen_order = []
    real_summarize = summarize_matches

    def summarize(matches, confusions, ap_matrix=False):
        seen_order.append([int(m.gt_count.sum()) for m in matches])
        return real_summarize(matches, confusions, ap_matrix)

    monkeypatch.setattr(model_eval, "summarize_matches", summarize)
    monkeypatch.setattr(distributed, "rank_items", lambda n: list(range(1, n, 2)))  # rank 1 of 2
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    monkeypatch.setattr(distributed, "all_gather", lambda obj: (gathered_from_rank_1.append(obj), [obj])[1])
    model_eval.evaluate_model("model", _Cfg, ["s0", "s1", "s2"], progress=True, split_over_ranks=True)
    assert fake_model["read"][-1] == (["s1.npz"], 0) and fake_model["bar"][-1]["disable"] is True  # not main
    monkeypatch.setattr(distributed, "rank_items", lambda n: list(range(0, n, 2)))  # rank 0 of 2
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    monkeypatch.setattr(distributed, "all_gather", lambda obj: [obj, gathered_from_rank_1[0]])
    m = model_eval.evaluate_model("model", _Cfg, ["s0", "s1", "s2"], progress=True, split_over_ranks=True)
    assert fake_model["read"][-1] == (["s0.npz", "s2.npz"], 0) and fake_model["bar"][-1]["disable"] is None
    _check_hand_metrics(m)  # every scene counted once
    assert seen_order[-1] == [150, 240, 200]  # instance vertices of s0, s1, s2: back in scene order
