"""The reader side: ClusterStats folded into StateModel.cluster (a ClusterView)."""

from __future__ import annotations

import pytest
from tiertop.monitor.cluster_state import ClusterFold, ClusterView, GpuView, RackView
from tiertop.monitor.protocol import ClusterStats, GpuSample, RackSample
from tiertop.monitor.state import StateModel


def _message(clock: float, hits: int, lookups: int, evictions: int, *, drill: list[int] = (),
             epoch: int = 1, racks: int = 2) -> ClusterStats:
    rack_samples = [RackSample(rack=r, gpus=4, occupancy={"hbm": 0.5 + r / 10}, hits=hits * (r + 1),
                               lookups=lookups, evictions=evictions, load=0.25, queue=r,
                               running=3, faults=["down"] if r else [])
                    for r in range(racks)]
    gpus = [GpuSample(gpu=4 * r + i, rack=r, role="colocated", occupancy={"hbm": 0.1 * i},
                      hits=hits, lookups=lookups, queue=i)
            for r in drill for i in range(4)]
    return ClusterStats(source="sim", epoch=epoch, clock=clock, tick=int(clock * 4),
                        racks=rack_samples, gpus=gpus, drill_racks=list(drill),
                        sample_note="note")


def test_windowed_hit_ratio_and_eviction_rate() -> None:
    model = StateModel(window_s=2.0)
    assert model.cluster == ClusterView()
    for step in range(21):  # 0.25 s ticks: 10 lookups, 6 hits, 2 evictions per tick
        model.fold(_message(step * 0.25, 6 * step, 10 * step, 2 * step))
    view = model.cluster
    assert [r.rack for r in view.racks] == [0, 1]
    rack0, rack1 = view.racks
    assert rack0.hit_ratio == pytest.approx(0.6)
    assert rack1.hit_ratio == pytest.approx(1.2)  # twice the hits per lookup in this message
    assert rack0.evictions_per_s == pytest.approx(8.0)
    assert rack0.occupancy == {"hbm": 0.5} and rack1.faults == ("down",)
    assert (rack0.load, rack0.queue, rack0.running) == (0.25, 0, 3)
    assert view.note == "note" and view.clock == 5.0 and view.gpus == {}


def test_no_lookups_in_the_window_is_none() -> None:
    fold = ClusterFold(window_s=1.0)
    fold.fold(_message(0.0, 0, 0, 0), 0.0)
    assert fold.view().racks[0].hit_ratio is None  # a single point: no window yet
    fold.fold(_message(1.0, 0, 0, 0), 1.0)
    assert fold.view().racks[0].hit_ratio is None
    assert fold.view().racks[0].evictions_per_s == 0.0


def test_drill_down_rows_come_and_go() -> None:
    model = StateModel(window_s=1.0)
    model.fold(_message(0.0, 0, 0, 0, drill=[1]))
    model.fold(_message(0.5, 5, 10, 0, drill=[1]))
    view = model.cluster
    assert view.drill_racks == [1]
    assert list(view.gpus) == [1]
    assert [g.gpu for g in view.gpus[1]] == [4, 5, 6, 7]
    first = view.gpus[1][0]
    assert isinstance(first, GpuView) and first.hit_ratio == pytest.approx(0.5)
    model.fold(_message(1.0, 5, 10, 0, drill=[0]))
    view = model.cluster
    assert list(view.gpus) == [0]
    assert view.gpus[0][0].hit_ratio is None  # a new rack starts its history afresh
    assert model._cluster._gpus.keys() == {0, 1, 2, 3}  # rack 1's histories were dropped


def test_restart_and_duplicates() -> None:
    model = StateModel(window_s=10.0)
    model.fold(_message(0.0, 0, 0, 0))
    model.fold(_message(1.0, 10, 20, 0))
    model.fold(_message(0.5, 99, 99, 0))  # older than what was folded: ignored
    assert model.cluster.racks[0].hit_ratio == pytest.approx(0.5)
    model.fold(_message(0.2, 1, 2, 0, epoch=2))  # a new epoch: the runtime restarted
    assert model.restarts == 1
    assert model.cluster.racks[0].hit_ratio is None


def test_bounded_and_in_the_snapshot() -> None:
    fold = ClusterFold(window_s=1e9, max_samples=8, max_racks=3)
    for step in range(50):
        fold.fold(_message(float(step), step, 2 * step, 0, racks=5), float(step))
    assert len(fold.view().racks) == 3 and fold.truncated == 100
    assert all(len(h.points) <= 8 for h in fold._racks.values())
    model = StateModel()
    model.fold(_message(0.0, 1, 2, 3, drill=[0]))
    snapshot = model.snapshot()["cluster"]
    assert snapshot["racks"][1]["faults"] == ["down"]
    assert snapshot["gpus"]["0"][1]["gpu"] == 1
    assert isinstance(model.cluster.racks[0], RackView)
