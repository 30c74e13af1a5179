"""The orchestration API (nldist.pipeline): RunContext, progress events and their labels.

The stages report what they do as :class:`nldist.pipeline.Event` objects to the listeners
subscribed with ``RunContext.subscribe``; the CLI's progress display is one such listener
and never patches the pipeline. These tests check the events a real run and a real
experiment emit (counts, kinds, order) and that the labels shown are each stage's own.
"""

from __future__ import annotations

from collections import Counter

import dask
import pytest

from nldist import cli, pipeline
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.pipeline import Event, RunContext, stages

KINDS = ["nonlinear-leverage", "linear-leverage", "uniform"]
EXP = {"s": [30, 60], "repeats": 2, "kinds": ["nonlinear-leverage", "uniform"]}


def _job(**kw):
    return validate_job({"name": "ev", "dataset": {"source": "diabetes", "standardize": True,
                                                   "chunk_rows": 100},
                         "model": "glm:swish", "theta": "optimum", "kind": KINDS[0],
                         "baselines": KINDS[1:], "s": 60, "radius": 5.0, "seed": 1,
                         "cluster": {"address": "synchronous"}, "experiment": EXP, **kw})


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A whole run and then its experiment, each with every event it emitted."""
    out = tmp_path_factory.mktemp("events") / "out"
    ctx = RunContext(_job(), out)
    events: list[Event] = []
    ctx.subscribe(events.append)
    with dask.config.set(scheduler="synchronous"):
        metrics = pipeline.run(ctx)
        run_events = list(events)
        events.clear()
        result = pipeline.experiment(ctx)
    return ctx, metrics, run_events, result, list(events)


def _trainings(events, status):
    """The per-training events (each with its kind); the counted stage around all of them
    has kind None (one start with its total, one end)."""
    return [e for e in events if e.stage == "train" and e.status == status
            and e.kind is not None]


def _counted(events):
    return [e for e in events if e.stage == "train" and e.kind is None]


def test_run_emits_a_counted_train_stage_with_one_advance_per_kind(recorded):
    ctx, metrics, events, _, _ = recorded
    counted = _counted(events)
    assert [(e.status, e.total) for e in counted] == [("start", len(KINDS)), ("end", None)]
    assert ctx.job.kinds() == KINDS and set(metrics["kinds"]) == set(KINDS)
    counted = [e for e in events if e.stage == "train" and e.status == "start"
               and e.total is not None]
    assert len(counted) == 1 and counted[0].total == len(KINDS)
    advances = [e for e in events if e.status == "advance"]
    assert all(e.stage == "train" for e in advances)
    assert [e.kind for e in advances] == KINDS  # one per training, each with its kind
    # the counted start comes before any training, after every kind's scores and sample
    first = events.index(counted[0])
    assert all(events.index(e) > first for e in advances)
    assert [e.kind for e in events[:first] if e.stage == "score" and e.status == "end"] == KINDS


def test_run_scores_start_and_end_once_per_kind_with_their_kind(recorded):
    ctx, _, events, _, _ = recorded
    for kind in KINDS:
        starts = [i for i, e in enumerate(events)
                  if e.stage == "score" and e.status == "start" and e.kind == kind]
        ends = [i for i, e in enumerate(events)
                if e.stage == "score" and e.status == "end" and e.kind == kind]
        assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], kind
        end = events[ends[0]]
        assert end.seconds is not None and end.seconds >= 0
        assert end.label == f"scores ({kind})"
        assert f"score:{kind}" in ctx.timings
    assert all(e.kind in KINDS for e in events if e.stage == "score")


def test_every_training_of_a_run_is_labelled_with_its_own_kind(recorded):
    _, _, events, _, _ = recorded
    starts, ends = _trainings(events, "start"), _trainings(events, "end")
    assert [e.kind for e in starts] == KINDS and [e.kind for e in ends] == KINDS
    labels = [e.label for e in starts]
    assert labels == [f"training on the sample ({k})" for k in KINDS]
    assert len(set(labels)) == len(KINDS)  # not every training called "uniform"
    for kind in KINDS:  # start, end, then its advance, in that order
        seq = [e.status for e in events if e.stage == "train" and e.kind == kind]
        assert seq == ["start", "end", "advance"], (kind, seq)


def test_experiment_events_count_every_training_per_kind(recorded):
    _, _, _, result, events = recorded
    per_kind = len(EXP["s"]) * EXP["repeats"]
    counted = [e for e in events if e.stage == "train" and e.status == "start"
               and e.total is not None]
    assert len(counted) == 1 and counted[0].total == per_kind * len(EXP["kinds"])
    advances = [e.kind for e in events if e.status == "advance"]
    assert advances == [k for k in EXP["kinds"] for _ in range(per_kind)]
    assert Counter(e.kind for e in _trainings(events, "start")) == \
        dict.fromkeys(EXP["kinds"], per_kind)
    assert set(result["summary"]) == set(EXP["kinds"])
    # the run's scores are finished: the experiment reuses them and emits no score stage
    assert not [e for e in events if e.stage == "score"]


def test_stop_after_score_emits_no_training(tmp_path, sync_scheduler):
    ctx = RunContext(_job(), tmp_path / "o")
    events: list[Event] = []
    ctx.subscribe(events.append)
    got = pipeline.run(ctx, stop_after="score")
    assert got["stage"] == "score" and set(got["kinds"]) == set(KINDS)
    assert not [e for e in events if e.stage in ("train", "sample", "gather", "evaluate")]
    assert [e.kind for e in events if e.stage == "score" and e.status == "start"] == KINDS
    # a second context on the same directory reuses the finished scores: no score events
    again: list[Event] = []
    ctx2 = RunContext(_job(), tmp_path / "o")
    ctx2.subscribe(again.append)
    pipeline.run(ctx2, stop_after="score")
    assert not [e for e in again if e.stage == "score"]
    assert all(ctx2.resume_stats[k]["computed"] == 0 for k in KINDS)
    with pytest.raises(NldistError, match="stop_after must be one of"):
        pipeline.run(ctx2, stop_after="gather")


def test_every_listener_gets_every_event_in_order(tmp_path, sync_scheduler):
    ctx = RunContext(_job(baselines=[]), tmp_path / "o")
    a: list[Event] = []
    b: list[Event] = []
    ctx.subscribe(a.append)
    ctx.subscribe(b.append)
    pipeline.run(ctx, stop_after="sample")
    assert a == b and a
    # the fused pass: pass 2, the sample and its rows are one stage of one read
    assert [(e.stage, e.status) for e in a if e.stage in ("score", "sample")
            and e.status != "chunks"] == [("score", "start"), ("score", "end")]
    passes = [e.done for e in a if e.stage == "score" and e.status == "chunks"]
    assert passes == [0, 1, 2, 3, 4, 5] * 2  # pass 1, then pass 2 + sample + gather
    assert [w for w, _, _ in ctx.reads if w != "theta*"] == ["pass 1", "pass 2 + sample + gather"]
    assert stages.theta.sample_size(ctx, KINDS[0]) == 60


def test_cli_progress_shows_each_training_with_its_kind(recorded):
    """The CLI's display, fed a real run's events, labels each training by its own kind
    and counts the trainings on its bar (it only listens; it patches nothing)."""
    _, _, events, _, _ = recorded
    shown: list[str] = []
    with cli._Progress("ev", quiet=False) as progress:
        update = progress.prog.update

        def recording(task, **kw):
            if "description" in kw:
                shown.append(kw["description"])
            return update(task, **kw)

        progress.prog.update = recording
        after_start, chunk_totals = {}, set()
        task, chunks = progress.prog.tasks
        for e in events:
            if e.stage == "train" and e.status == "end" and e.kind is None:
                # every training counted on the bar; after the counted stage, no stale count
                assert task.total == len(KINDS) and task.completed == len(KINDS)
            progress(e)
            if e.stage == "train" and e.status == "start" and e.total is None:
                after_start[e.kind] = shown[-1]
            if e.status == "chunks":
                assert chunks.total == e.total and chunks.completed == e.done
                chunk_totals.add(e.total)
        assert task.total is None and not chunks.visible
        assert chunk_totals == {5}  # diabetes: 442 rows in chunks of 100
    assert after_start == {k: f"ev: training on the sample ({k})" for k in KINDS}
    assert "ev: scores (linear-leverage)" in shown and "ev: full-data losses" in shown
    assert not [d for d in shown if d.endswith(": working")]  # between stages: what ended
    assert "ev: scores (uniform): done" in shown
    # the experiment: a step among its counted trainings says so, the losses name the kind
    exp_shown: list[str] = []
    with cli._Progress("ev", quiet=False) as progress:
        update = progress.prog.update
        progress.prog.update = lambda task, **kw: (exp_shown.append(kw.get("description", "")),
                                                   update(task, **kw))[1]
        for e in recorded[4]:
            progress(e)
    assert "ev: trainings: gather the sampled rows" in exp_shown
    kinds = {e.kind for e in recorded[4] if e.stage == "evaluate" and e.status == "start"}
    assert kinds and None not in kinds
    assert {f"ev: trainings: full-data losses ({k})" for k in kinds} <= set(exp_shown)
    with cli._Progress("ev", quiet=True) as progress:  # --quiet: no display, events ignored
        assert progress.prog is None
        for e in events:
            progress(e)
        assert progress.prog is None


def _chunk_events(events, stage):
    return [e for e in events if e.status == "chunks" and e.stage == stage]


def _assert_counts_every_chunk(evs, n_chunks):
    """Each pass: 0, 1, ..., total in order, total = the chunk tasks of the pass."""
    assert evs, "no chunk events"
    runs, cur = [], []
    for e in evs:
        if e.done == 0:
            cur = []
            runs.append(cur)
        cur.append(e)
    for run in runs:
        total = run[0].total
        assert [e.done for e in run] == list(range(total + 1))
        assert all(e.total == total for e in run)
    assert any(run[0].total == n_chunks for run in runs)


def test_passes_over_the_chunks_report_each_finished_chunk(recorded):
    """A chunk-level bar comes from ``chunks`` events: every pass of θ*, the scores and
    the gather counts its chunk tasks 0..total (diabetes: 442 rows in chunks of 100)."""
    _, _, events, _, _ = recorded
    for stage in ("optimum", "score"):
        _assert_counts_every_chunk(_chunk_events(events, stage), 5)
    scored = {e.kind for e in _chunk_events(events, "score")}
    assert {"nonlinear-leverage", "linear-leverage"} <= scored  # uniform reads no chunk


def test_chunk_events_on_a_real_cluster(local_client, tmp_path):
    """The same events from worker processes (futures completing on a LocalCluster)."""
    ctx = RunContext(_job(experiment=None), tmp_path / "out")
    events: list[Event] = []
    ctx.subscribe(events.append)
    pipeline.run(ctx, stop_after="score")
    _assert_counts_every_chunk(_chunk_events(events, "score"), 5)
    _assert_counts_every_chunk(_chunk_events(events, "optimum"), 5)
