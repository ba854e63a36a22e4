"""The training order and the split across workers (dlma_ray.workers.sharding), without Ray: every optimizer step must
hold the same rows for 1 worker with accumulation as for W workers, whatever order the table's rows came in."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlma_ray.config.tree import ConfigError, load_config
from dlma_ray.workers.sharding import ORDER_COLUMN, order_keys, worker_micro_batches
from dlma_ray.stages.pools import fitting_pool_size


class ListIterator:
    """Stands in for a Ray DataIterator over an in-memory table: iter_batches with drop_last."""

    def __init__(self, table: dict):
        self.table = table

    def iter_batches(self, batch_size, batch_format, drop_last):
        n = len(next(iter(self.table.values())))
        for start in range(0, n - batch_size + 1 if drop_last else n, batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.table.items()}


def table(n: int, seed: int = 0, perm=None) -> dict:
    ids = np.array([f"p{i:03d}" for i in range(n)], dtype=object)
    chosen = np.array([f"yes {i}" for i in range(n)], dtype=object)
    rows = {"prompt_id": ids, "chosen": chosen, "rejected": np.array([f"no {i}" for i in range(n)], dtype=object)}
    if perm is not None:
        rows = {k: v[perm] for k, v in rows.items()}
    order = np.argsort(order_keys(rows, seed), kind="stable")
    return {**{k: v[order] for k, v in rows.items()}, ORDER_COLUMN: order_keys(rows, seed)[order]}


def steps(rows: dict, micro: int, accum: int, world: int, n_steps: int) -> list[set]:
    """The prompt ids of each optimizer step, gathered over every rank."""
    per_rank = [list(worker_micro_batches(ListIterator(rows), micro, r, world, n_steps * accum)) for r in range(world)]
    return [set().union(*(set(b["prompt_id"]) for r in range(world) for b in per_rank[r][s * accum:(s + 1) * accum]))
            for s in range(n_steps)]


def test_order_depends_on_content_and_seed_only():
    a = table(20)
    b = table(20, perm=np.random.default_rng(1).permutation(20))  # the rows written in another order
    assert list(a["prompt_id"]) == list(b["prompt_id"])
    assert list(table(20, seed=1)["prompt_id"]) != list(a["prompt_id"])  # the seed shuffles


@pytest.mark.parametrize("world", [2, 4])
def test_w_workers_take_the_single_workers_steps(world):
    rows, micro, global_batch = table(37), 2, 8  # 37: the last, incomplete step is dropped everywhere
    n_steps = (37 // world) // micro // (global_batch // (micro * world))  # stages.train.optimizer_steps
    one = steps(rows, micro, global_batch // micro, 1, n_steps)
    many = steps(rows, micro, global_batch // (micro * world), world, n_steps)
    assert n_steps == 4 and one == many
    assert all(len(s) == global_batch for s in one)
    assert one == [set(rows["prompt_id"][s * 8:(s + 1) * 8]) for s in range(4)]


def test_rows_out_of_order_are_refused():
    rows = table(8)
    rows[ORDER_COLUMN] = rows[ORDER_COLUMN][::-1].copy()
    with pytest.raises(RuntimeError, match="out of their seeded order"):
        list(worker_micro_batches(ListIterator(rows), 2, 0, 2, 4))


def test_custom_resources_bound_the_pool():
    assert fitting_pool_size(4, 0.5, 0, 8, 0, custom={"engine_node": 1}, cluster_custom={"engine_node": 2}) == 2
    with pytest.raises(RuntimeError, match="engine_node"):
        fitting_pool_size(1, 0.5, 0, 8, 0, custom={"engine_node": 1}, cluster_custom={})


def test_custom_resource_fields():
    cfg = load_config(None, ["resources.train_worker_resources={train_slot: 1}"])
    assert cfg.resources.train_worker_resources == {"train_slot": 1.0} and cfg.resources.engine_resources == {}
    with pytest.raises(ConfigError, match="resources.engine_resources"):
        load_config(None, ["resources.engine_resources=[a]"])


def test_nodes_sharing_a_session_dir_are_found():
    from dlma_ray.workers.nodes import check_shared_session_dirs, shared_session_dirs

    def node(i, host, temp, alive=True):
        return {"NodeID": f"n{i}", "NodeManagerAddress": host, "Alive": alive,
                "ObjectStoreSocketName": f"{temp}/session_x/sockets/plasma_store{i}"}

    assert shared_session_dirs([node(1, "10.0.0.1", "/tmp/ray"), node(2, "10.0.0.1", "/tmp/ray"),
                                node(3, "10.0.0.2", "/tmp/ray"), node(4, "10.0.0.1", "/tmp/rn")]) == \
        {"/tmp/ray/session_x": ["n1", "n2"]}
    assert shared_session_dirs([node(1, "h", "/tmp/ray"), node(2, "h", "/tmp/ray", alive=False)]) == {}
    shared = [node(1, "h", "/tmp/ray"), node(2, "h", "/tmp/ray")]
    with pytest.raises(RuntimeError, match="--temp-dir"):
        check_shared_session_dirs(shared, "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_1")
    check_shared_session_dirs(shared, "")  # no working_dir: a warning only
    check_shared_session_dirs([node(1, "h", "/tmp/rh"), node(2, "h", "/tmp/rn")], "pkg")


def test_a_deleted_working_directory_stops_with_the_cause(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
            "from dlma_ray.cli import setup_environment; setup_environment()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    out = subprocess.run([sys.executable, "-c", code, str(gone)], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1 and "working directory was deleted" in out.stderr
