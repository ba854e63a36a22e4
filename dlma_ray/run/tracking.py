"""Experiment trackers: one small interface, a registry of backends by name (`run.trackers`).

    console      one concise log line per log call
    tensorboard  event files under <run>/tracking/tensorboard/ (torch.utils.tensorboard; `tensorboard --logdir`)
    jsonl        one JSON object per log call in <run>/tracking/metrics.jsonl
    mlflow       MLflow runs: MLFLOW_TRACKING_URI when set, else the file store <run>/tracking/mlruns
    wandb        Weights & Biases, offline (WANDB_MODE=offline) unless WANDB_MODE is set; files in <run>/tracking/wandb

Each backend imports its library only when opened; a missing one raises `TrackerUnavailable` naming the pip
extra. Train rank 0 and the driver open trackers (dlma_ray.workers.trainlog). A remote run dir (`s3://...`): files are
written locally and copied under <run>/tracking/ at close (jsonl appended); mlflow needs MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, Protocol

from dlma_ray.core import storage
from dlma_ray.run.layout import RunLayout

log = logging.getLogger("dlma_ray")
_LIBRARIES = {"tensorboard": ("tensorboard", "the `cpu` / `gpu` extras, or pip install tensorboard"),
              "mlflow": ("mlflow", "pip install 'dlma-ray[track]' (or pip install mlflow-skinny)"),
              "wandb": ("wandb", "pip install 'dlma-ray[track]' (or pip install wandb)")}


class TrackerUnavailable(ImportError):
    """A configured tracker's library is not installed: names the tracker and how to install it."""


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class Context:
    """What a backend needs: where its files go (``local``: a folder on this machine) and the run it logs."""

    def __init__(self, run_dir: str, run_name: str, config: dict, job_type: str, start_step: int | None = None):
        self.run_dir, self.run_name, self.config, self.job_type = run_dir, run_name, config, job_type
        self.start_step = start_step  # a training's first step: what an earlier attempt logged from there is void
        self.remote = storage.is_uri(run_dir)
        self.dest = RunLayout(run_dir).tracking
        self.local = tempfile.mkdtemp(prefix="dlma-tracking-") if self.remote else self.dest

    def upload(self, sub: str) -> None:
        """Remote run dir: copy the local ``sub`` folder to <run>/tracking/<sub>; local: nothing to do."""
        src = os.path.join(self.local, sub)
        if self.remote and os.path.isdir(src):
            storage.upload_dir(src, storage.join(self.dest, sub))


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'beta': 0.1}} -> {'train.beta': 0.1}; lists become their text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return out


def _require(name: str):
    module, extra = _LIBRARIES[name]
    try:
        return __import__(module)
    except ImportError as exc:
        raise TrackerUnavailable(f"run.trackers includes {name!r}, but {module} cannot be imported ({exc}); "
                                 f"install it with {extra}, or remove {name!r} from run.trackers") from None


def check_available(names: list[str]) -> None:
    """Raise `TrackerUnavailable` now, before any work, when a configured tracker's library is missing."""
    for name in dict.fromkeys(names):
        if name in _LIBRARIES:
            _require(name)


# ---------------------------------------------------------------- backends

_CONSOLE_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "learning_rate", "pairs_per_second",
                 "tokens_per_second")


def console_line(metrics: dict[str, float], step: int) -> str:
    """A train step's headline numbers, or every metric with `x`, `x/low`, `x/high`, `x/n` folded into one."""
    if any(k in metrics for k in _CONSOLE_KEYS):
        return f"step {step}: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in _CONSOLE_KEYS if k in metrics)
    parts = []
    for k, v in metrics.items():
        if k.rsplit("/", 1)[-1] in ("low", "high", "n") and k.rsplit("/", 1)[0] in metrics:
            continue
        lo, hi, n = (metrics.get(f"{k}/{s}") for s in ("low", "high", "n"))
        interval = f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        parts.append(f"{k} {v:.4g}{interval}" + (f" (n={n:.0f})" if n is not None else ""))
    return f"step {step}: " + ", ".join(parts)


class ConsoleTracker:
    """At the job's `run.log_level` INFO or DEBUG: through the `dlma_ray` logger where logging is set up for
    INFO (the driver), else on stdout (a Ray Train worker, whose stdout reaches the driver's log)."""

    def __init__(self, ctx: Context):
        self.prefix = ctx.run_name
        self.quiet = (ctx.config.get("run") or {}).get("log_level", "INFO") not in ("DEBUG", "INFO")

    def log(self, metrics, step):
        if self.quiet:
            return
        line = f"[{self.prefix}] {console_line(metrics, step)}"
        if log.hasHandlers() and log.isEnabledFor(logging.INFO):
            log.info("%s", line)
        else:
            print(line, flush=True)

    def close(self): ...


class TensorBoardTracker:
    def __init__(self, ctx: Context):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.ctx = ctx
        self.writer = SummaryWriter(log_dir=os.path.join(ctx.local, "tensorboard"))
        for summary in hparams(flat_config(ctx.config), {}):
            self.writer.file_writer.add_summary(summary)
        if ctx.start_step is not None:  # TensorBoard drops every step >= this one read from earlier files
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            self.writer.file_writer.add_event(Event(step=ctx.start_step, session_log=SessionLog(status=1)))
        self.writer.add_text("config", "```\n" + json.dumps(ctx.config, indent=2) + "\n```")

    def log(self, metrics, step):
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a worker that dies keeps every step logged so far

    def close(self):
        self.writer.close()
        self.ctx.upload("tensorboard")


class JsonlTracker:
    """Appends {"step", "time", metrics...} lines to <run>/tracking/metrics.jsonl."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        os.makedirs(ctx.local, exist_ok=True)
        self.path = os.path.join(ctx.local, "metrics.jsonl")

    def log(self, metrics, step):
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")

    def close(self):
        if self.ctx.remote and os.path.exists(self.path):
            dest = storage.join(self.ctx.dest, "metrics.jsonl")
            before = storage.read_text(dest) if storage.exists(dest) else ""
            with open(self.path, encoding="utf-8") as fh:
                storage.write_text_atomic(dest, before + fh.read())
            os.remove(self.path)


class MlflowTracker:
    """One MLflow run per dlma-ray run, found again by its name (`run.dir`'s last part) in experiment
    MLFLOW_EXPERIMENT_NAME (default `dlma-ray`); the config is logged as params when the run is created."""

    def __init__(self, ctx: Context):
        _require("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            if ctx.remote:
                raise ValueError(f"run.trackers includes 'mlflow' and run.dir is remote ({ctx.run_dir}): set "
                                 "MLFLOW_TRACKING_URI to a tracking server or a shared path (an MLflow file store "
                                 "cannot live in an object store)")
            # MLflow 3 asks for this opt-in before it writes a file store; the store is what offline use needs.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = "file://" + os.path.abspath(os.path.join(ctx.local, "mlruns"))
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "dlma-ray")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        found = self.client.search_runs([exp_id], filter_string=f"tags.`mlflow.runName` = '{ctx.run_name}'",
                                        max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            self.run_id = found[0].info.run_id
        else:
            self.run_id = self.client.create_run(exp_id, run_name=ctx.run_name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(ctx.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self):
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One W&B run per process that logs (each round's training, the driver), grouped by the run's name."""

    def __init__(self, ctx: Context):
        os.environ.setdefault("WANDB_MODE", "offline")
        wandb = _require("wandb")
        self.ctx = ctx
        os.makedirs(ctx.local, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dlma-ray"), name=ctx.run_name,
                              group=ctx.run_name, job_type=ctx.job_type, dir=ctx.local, config=ctx.config,
                              reinit="create_new", settings=wandb.Settings(console="off"))

    def log(self, metrics, step):
        self.run.log(dict(metrics), step=step)

    def close(self):
        self.run.finish()
        latest = os.path.join(self.ctx.local, "wandb", "latest-run")
        if self.ctx.remote and os.path.islink(latest):  # copied, the link would be the newest run a second time
            os.remove(latest)
        self.ctx.upload("wandb")


REGISTRY: dict[str, Callable[[Context], Tracker]] = {
    "console": ConsoleTracker, "tensorboard": TensorBoardTracker, "jsonl": JsonlTracker, "mlflow": MlflowTracker,
    "wandb": WandbTracker}
TRACKERS = tuple(REGISTRY)


# ---------------------------------------------------------------- fan-out

class Trackers:
    """Every configured tracker behind one `log` / `close`; None and non-numeric values are left out."""

    def __init__(self, trackers: list[Tracker], ctx: Context | None = None):
        self.trackers, self.ctx = trackers, ctx

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean:
            for t in self.trackers:
                t.log(clean, int(step))

    def close(self) -> None:
        errors = []
        for t in self.trackers:
            try:
                t.close()
            except Exception as exc:  # noqa: BLE001 - close the others, then raise the first
                errors.append(exc)
        if self.ctx is not None and self.ctx.remote:
            shutil.rmtree(self.ctx.local, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trackers(names: list[str], run_dir: str, name: str, config: dict, job_type: str = "driver",
                  start_step: int | None = None) -> Trackers:
    """Open each named tracker for the run in ``run_dir`` (each logs ``config`` once, as params / hparams).
    ``start_step``: a training's first step (after a retry: the checkpoint's step + 1)."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"run.trackers: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(TRACKERS)}")
    ctx = Context(run_dir, name, config, job_type, start_step)
    opened: list[Tracker] = []
    try:
        for n in dict.fromkeys(names):
            opened.append(REGISTRY[n](ctx))
    except BaseException:
        with contextlib.suppress(Exception):  # the opening error is the one to report
            Trackers(opened, ctx).close()
        raise
    return Trackers(opened, ctx)
