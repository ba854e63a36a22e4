"""The runtime env of every process that holds a vLLM engine (dlma_ray.workers.engines.ENGINE_RUNTIME_ENV), in real Ray."""


def test_engine_processes_run_at_normal_priority():
    """Ray starts workers at niceness 15 and an engine's core and worker processes inherit it: an engine then
    started 1.1-1.5x slower than a standalone one (bench/RESULTS.md). Its runtime env must give it 0, and
    keep vLLM's core alive for vLLM's own shutdown; other tasks keep Ray's default."""
    import ray

    from dlma_ray.workers.engines import ENGINE_RUNTIME_ENV

    def probe():
        import os
        import subprocess
        import sys

        child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
        return os.nice(0), int(child.stdout), os.environ.get("RAY_kill_child_processes_on_worker_exit")

    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        engine = ray.get(ray.remote(num_cpus=0, runtime_env=ENGINE_RUNTIME_ENV)(probe).remote())
        plain = ray.get(ray.remote(num_cpus=0)(probe).remote())
    finally:
        ray.shutdown()
    assert engine == (0, 0, "false"), "the engine's process and its children must run at niceness 0"
    assert plain[0] == plain[1] > 0, "Ray's default worker niceness changed: re-measure bench_generate"
