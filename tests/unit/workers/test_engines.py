"""Room for evaluation's scorers beside the engines kept for the next round's generate stage
(`dlma_ray.workers.engines.room_beside_scorers`), on hand-made resources. The kept engine itself, in real Ray and
vLLM: tests/e2e/test_engine_handover.py."""

from types import SimpleNamespace

from dlma_ray.workers.engines import room_beside_scorers


def resources(**kw):
    base = dict(gpus_per_engine=0.0, gpus_per_scorer=0.0, engine_resources={}, scorer_resources={})
    return SimpleNamespace(**{**base, **kw})


def test_cpu_engines_always_leave_room():
    """Kept engines hold no CPU: on a CPU cluster evaluation's scorers always fit beside them."""
    assert room_beside_scorers(resources(), 4, {"CPU": 2.0})


def test_gpu_engines_need_room_for_a_scorer_or_the_pi0_engine():
    res = resources(gpus_per_engine=1.0, gpus_per_scorer=1.0)
    assert not room_beside_scorers(res, 1, {"CPU": 16.0, "GPU": 1.0}), "the scorer would wait for the engine forever"
    assert room_beside_scorers(res, 1, {"CPU": 16.0, "GPU": 2.0})
    assert not room_beside_scorers(res, 2, {"GPU": 2.0})
    tp2 = resources(gpus_per_engine=2.0, gpus_per_scorer=1.0)  # evaluation's pi_0 engine needs 2 beside the kept one
    assert not room_beside_scorers(tp2, 1, {"GPU": 3.0}) and room_beside_scorers(tp2, 1, {"GPU": 4.0})


def test_custom_labels_count_like_gpus():
    res = resources(engine_resources={"engine_node": 1.0}, scorer_resources={"engine_node": 1.0})
    assert not room_beside_scorers(res, 1, {"engine_node": 1.0}) and room_beside_scorers(res, 1, {"engine_node": 2.0})
    # Scorers placed apart still wait for evaluation's pi_0 engine, which needs an engine node of its own.
    apart = resources(engine_resources={"engine_node": 1.0}, scorer_resources={"scorer_node": 1.0})
    assert not room_beside_scorers(apart, 1, {"engine_node": 1.0, "scorer_node": 1.0})
    assert room_beside_scorers(apart, 1, {"engine_node": 2.0, "scorer_node": 1.0})
