"""Where a training run reports beside metrics.jsonl: TensorBoard, MLflow, and figures during training.

``RunLogger`` is what the trainer calls: ``epoch(line, global_step)`` after every epoch and
``close(status)`` at the end. It owns

- a TensorBoard writer into RUN_DIR/tensorboard, when tensorboard is installed
  (``pip install "aevb[tensorboard]"``): every number of the epoch line, and the figures;
- an MLflow run, when ``train.mlflow`` names a tracking URI (``pip install "aevb[mlflow]"``): the
  configuration as params, the epoch lines as metrics (step = epoch), the figures, and at the end
  the run directory as artifacts (under ``run/``). Its run id is kept in the train state, so a
  resumed run continues the same MLflow run;
- samples and reconstructions every ``train.figures_every`` epochs, written as
  RUN_DIR/figures/epoch_NNNN_{samples,reconstructions}.png (through ``aevb.checkpoint``).

Only the main process of a data-parallel run logs. Nothing here changes training: the figures use
their own generator, so a run with figures ends with the same weights as one without.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig

EXPERIMENT = "aevb"  # the MLflow experiment runs are logged under
FIGURE_IMAGES = 16  # reconstructions drawn per figure
_NOT_SCALARS = ("epoch", "step", "samples_seen")
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "paused": "KILLED", "failed": "FAILED"}


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter into RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra: pip install "aevb[tensorboard]"
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def scalars(line: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch line worth plotting (not its counters)."""
    return {k: float(v) for k, v in line.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


# --- figures during training --------------------------------------------------------------


@torch.no_grad()
def epoch_figures(model, data, epoch: int) -> dict[str, bytes]:
    """PNG bytes of prior samples (seed 0, the same z every time) and of the first FIGURE_IMAGES
    validation (else test) images above their reconstructions, titled with the epoch."""
    from .viz import plot_reconstructions, plot_samples

    split = data.valid if data.valid is not None else data.test
    x = split.x[:FIGURE_IMAGES]
    y = split.y[:FIGURE_IMAGES] if model.config.conditional else None
    was_training = model.training
    model.eval()
    try:
        pngs = {}
        for name, draw in (("samples", lambda f: plot_samples(model, f, n=64, seed=0,
                                                              title=f"samples from the prior after epoch {epoch}")),
                           ("reconstructions", lambda f: plot_reconstructions(
                               model, x, f, n=len(x), y=y, title=f"reconstructions after epoch {epoch}"))):
            buf = io.BytesIO()
            draw(buf)
            pngs[name] = buf.getvalue()
    finally:
        model.train(was_training)
    return pngs


def png_array(png: bytes):
    """An (H, W, 3) uint8 array of PNG bytes, as TensorBoard's add_image takes it."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


# --- MLflow ----------------------------------------------------------------------------------


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def mlflow_client(uri: str):
    """An ``MlflowClient`` for the tracking ``uri``; a file store is allowed explicitly (MLflow 3 asks
    for MLFLOW_ALLOW_FILE_STORE, as it prefers a database), since the URI names one on purpose."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("mlflow tracking needs MLflow: pip install \"aevb[mlflow]\" (or mlflow-skinny), or "
                          "train without mlflow") from None
    if _is_file_store(uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def config_params(config: RunConfig) -> dict[str, str]:
    """The configuration flattened to MLflow params: "model.latent_dim" -> "20"."""
    params = {"format_version": str(config.format_version)}
    for section in ("model", "data", "train"):
        for key, value in getattr(config, section).__dict__.items():
            params[f"{section}.{key}"] = str(value)
    return params


class MlflowRun:
    """One MLflow run of a training run: created on the first start, continued on resume (``run_id``)."""

    def __init__(self, uri: str, run_dir: Path, config: RunConfig, run_id: str | None = None):
        self.client = mlflow_client(uri)
        from mlflow.entities import Param

        self.store = _local_path(uri) if _is_file_store(uri) else None
        if run_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                         tags={"aevb.run_dir": str(run_dir.absolute())})
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in config_params(config).items()])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.run_dir = run_dir

    def log_epoch(self, line: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(line["epoch"])) for k, v in scalars(line).items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_run_directory(self) -> None:
        """Every file of the run directory under the artifact folder ``run/`` (a store inside it excluded)."""
        for entry in sorted(self.run_dir.iterdir()):
            if self.store is not None and _contains(entry, self.store):
                continue
            if entry.is_dir():
                self.client.log_artifacts(self.run_id, str(entry), f"run/{entry.name}")
            elif not entry.name.endswith(".tmp"):
                self.client.log_artifact(self.run_id, str(entry), "run")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


def _local_path(uri: str) -> Path:
    """The folder of a file-store URI (file:/abs, file:///abs or a plain path)."""
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def _contains(entry: Path, store: Path) -> bool:
    entry, store = entry.absolute(), store.absolute()
    return entry == store or entry in store.parents


def log_files(run_dir: Path, paths: list[Path], folder: str = "run") -> None:
    """Add files written after training (the final figures, report.html) to the run's MLflow run, when
    it has one."""
    config = ckpt.read_config(run_dir)
    if not config.train.mlflow:
        return
    _, progress, _ = ckpt.load_train_state(run_dir)
    run_id = progress.get("mlflow_run_id")
    if run_id is None:
        return
    client = mlflow_client(config.train.mlflow)
    for path in paths:
        client.log_artifact(run_id, str(path), folder)


# --- the logger the trainer calls -------------------------------------------------------------


class RunLogger:
    """TensorBoard, MLflow and figures for one training run (see the module docstring). ``state``: what a
    checkpoint restored (the MLflow run id); ``self.state`` is what the next checkpoint should keep."""

    STATE_KEYS = ("mlflow_run_id",)  # what ``state`` may hold (the trainer keeps it in the train state)

    def __init__(self, run_dir: Path, config: RunConfig, model, data, state: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.config = config
        self.model = model
        self.data = data
        self.tb = tensorboard_writer(run_dir)
        self.mlflow: MlflowRun | None = None
        state = dict(state or {})
        if config.train.mlflow:
            self.mlflow = MlflowRun(config.train.mlflow, run_dir, config, run_id=state.get("mlflow_run_id"))
            state["mlflow_run_id"] = self.mlflow.run_id
        self.state = state

    def epoch(self, line: dict[str, Any], global_step: int) -> None:
        values = scalars(line)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key.replace("_", "/", 1), value, global_step)
        if self.mlflow is not None:
            self.mlflow.log_epoch(line)
        every = self.config.train.figures_every
        if every and line["epoch"] % every == 0:
            self.figures(int(line["epoch"]), global_step)
        if self.tb is not None:
            self.tb.flush()

    def figures(self, epoch: int, global_step: int) -> list[Path]:
        paths = []
        for name, png in epoch_figures(self.model, self.data, epoch).items():
            path = ckpt.write_figure(self.run_dir, f"epoch_{epoch:04d}_{name}.png", png)
            paths.append(path)
            if self.tb is not None:
                self.tb.add_image(f"figures/{name}", png_array(png), global_step, dataformats="HWC")
            if self.mlflow is not None:
                self.mlflow.log_file(path, ckpt.FIGURES)
        return paths

    def close(self, status: str) -> None:
        """``status``: finished, paused (stopped to be resumed), interrupted or failed."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            try:
                if status == "finished":
                    self.mlflow.log_run_directory()
            finally:
                self.mlflow.end(status)
                self.mlflow = None
