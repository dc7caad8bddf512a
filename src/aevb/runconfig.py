"""One path from what a user asks for to a run's configuration, for the CLI and the Python API alike.

``plan_run`` applies, in this order: the starting configuration (a ``RunConfig``, a config.json,
or the data set's defaults), a preset, the explicit settings; then it fits the model to the data
(its input shape, and a conditional model's number of classes from the labels), and checks the
output folder. Resuming takes the run's own configuration, of which only ``RESUMABLE`` may change.
``aevb train`` and ``aevb.train`` both call it, so the rules and defaults are the same in both.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .config import PRESETS, ConfigError, RunConfig, check_type
from .data import Dataset, load_dataset
from .devices import resolve_device

# What a resumed run may change: where and how it runs, and how long.
RESUMABLE = ("epochs", "device", "data_dir", "download", "compile")
# Other names for ModelConfig.family: ``model`` (as in --model), ``kind`` (deprecated).
FAMILY_ALIASES = ("model", "kind")
# What aevb writes into a run directory (removed before a run is overwritten).
RUN_FILES = (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.TRAIN_STATE, ckpt.METRICS, ckpt.BEST, ckpt.EVALUATION, "samples.png",
             "reconstructions.png", "report.html")


@dataclass
class RunPlan:
    """What to train: the configuration, the run directory, whether it resumes, and the data when
    it was read already (to fit the model to it)."""

    config: RunConfig
    out: Path
    resume: bool
    data: Dataset | None = None


def default_binarize(likelihood: str, binary: bool) -> str:
    """The binarization a run gets unless it names one: dynamic for grey levels under a Bernoulli
    decoder (whose log p(x) is a probability only of binary data), none otherwise."""
    return "dynamic" if likelihood == "bernoulli" and not binary else "none"


# The settings a built-in data set of images of a size (height, width) starts from, unless given: 64x64 images
# (dSprites and the other disentanglement sets) get Locatello et al. (2019)'s network and training, their
# common baseline: the conv64 network with a dense layer of 256, 10 latent dimensions, Adam at 1e-4 (PyTorch's
# default betas (0.9, 0.999) and eps 1e-8, theirs), batches of 64.
IMAGE_SIZE_DEFAULTS: dict[tuple[int, int], dict[str, Any]] = {
    (64, 64): {"architecture": "conv64", "hidden": (256,), "latent_dim": 10, "optimizer": "adam", "lr": 1e-4,
               "batch_size": 64},
}


def default_config(dataset: str = "digits") -> RunConfig:
    """Sensible defaults for a data set: its shape, usual likelihood and ``default_binarize``, and for a
    built-in one of an image size listed in ``IMAGE_SIZE_DEFAULTS``, that size's network and training."""
    from .data import dataset_info

    info = dataset_info(dataset)  # None for folder:/npy: data: plan_run fits the shape to what it reads
    cfg = RunConfig()
    cfg.data = replace(cfg.data, dataset=dataset,
                       binarize=default_binarize(info.likelihood, info.binary) if info else cfg.data.binarize)
    cfg.model = replace(cfg.model, input_shape=info.shape if info else (1, 28, 28),
                        likelihood=info.likelihood if info else "bernoulli")
    if info is not None and tuple(info.shape[1:]) in IMAGE_SIZE_DEFAULTS:
        cfg = apply_overrides(cfg, IMAGE_SIZE_DEFAULTS[tuple(info.shape[1:])])
    return cfg


def _family_name(overrides: dict[str, Any]) -> dict[str, Any]:
    """``model=``/``kind=`` as ``family=`` (``kind`` with a deprecation warning)."""
    out = dict(overrides)
    for alias in FAMILY_ALIASES:
        if alias in out:
            if alias == "kind":
                warnings.warn("'kind' is deprecated and will be removed in the next release; use 'model' "
                              "(the model family)", DeprecationWarning, stacklevel=3)
            value = out.pop(alias)
            if "family" in out and out["family"] != value:
                raise ConfigError(f"two model families were given: {out['family']!r} and {value!r}")
            out["family"] = value
    return out


def _unknown_setting(key: str, family: str) -> str:
    """The line for a setting no part of this run has: the families whose own settings it is, if any."""
    from .models import FAMILIES

    owners = [name for name, fam in FAMILIES.items() if key in {f.name for f in fields(fam.config)}]
    if not owners:
        return f"unknown setting {key!r}"
    flag = "--" + key.replace("_", "-")
    which = " or ".join(f"model={name!r} (--model {name})" for name in owners)
    return f"setting {key!r} ({flag}) belongs to {which}, not to the {family!r} family; add the family or drop it"


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set fields by name on whichever of model/data/train has them; ``model``/``kind`` name the family.
    A new family keeps the settings its config class shares with the old one."""
    from .models import get_family

    overrides = _family_name(overrides)
    model_cls = get_family(overrides.get("family", config.model.family)).config
    model = config.model
    if type(model) is not model_cls:  # another family with a config class of its own
        shared = {f.name: getattr(model, f.name) for f in fields(model) if f.name in {g.name for g in fields(model_cls)}}
        model = model_cls(**shared)
    parts = {"model": model, "data": config.data, "train": config.train}
    changes: dict[str, dict[str, Any]] = {k: {} for k in parts}
    for key, value in overrides.items():
        owners = [name for name, obj in parts.items() if key in {f.name for f in fields(obj)}]
        if not owners:
            raise ConfigError(_unknown_setting(key, overrides.get("family", config.model.family)))
        changes[owners[0]][key] = value
    built = {}
    for name, obj in parts.items():
        try:
            built[name] = replace(obj, **changes[name])
        except (TypeError, ConfigError) as e:
            for key, value in changes[name].items():  # a value of the wrong kind: name it and its type
                check_type(type(obj), key, value, name)
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{name} settings: {e}") from None
    return RunConfig(model=built["model"], data=built["data"], train=built["train"],
                     format_version=config.format_version)


def default_out(dataset: str) -> Path:
    """runs/DATASET (a folder: or npy: path flattened into one name)."""
    return Path("runs") / dataset.replace(":", "_").replace("/", "_").strip("_")


def check_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an output folder that holds a run or other files (a run only without ``overwrite``),
    or that cannot be written (``aevb.checkpoint.check_writable``). Changes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; choose another output folder")
    if out.is_dir():
        if is_run(out) and not overwrite:
            raise ConfigError(f"{out} already holds a run; resume it (--resume, resume=True), choose another "
                              "output folder, or replace it (overwrite=True in Python)")
        if not is_run(out) and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty and is not a run directory; choose an empty or new folder")
    ckpt.check_writable(out)


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds an aevb run (its config.json or training state)."""
    return (folder / ckpt.CONFIG).exists() or (folder / ckpt.TRAIN_STATE).exists()


def clear_run(out: Path) -> None:
    """Remove the files aevb wrote into the run directory ``out`` (other files stay)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for folder in ("tensorboard", "plots", ckpt.FIGURES):
        shutil.rmtree(out / folder, ignore_errors=True)


def check_memory(config: RunConfig, data: Dataset, own_networks: bool = False) -> None:
    """Refuse a run whose model (and, on an accelerator, data) would not fit in the memory free on
    its device, with the estimate and what to change; estimated on the meta device, nothing allocated.
    ``own_networks``: the model uses networks of your own, whose size is not known here."""
    from .memory import available_bytes, format_bytes, model_footprint, tensor_bytes, training_bytes

    device = resolve_device(config.train.device)
    free = available_bytes(device)
    footprint = None if own_networks else model_footprint(config.model)
    if free is None or footprint is None:
        return
    params, activations = footprint
    need = training_bytes(config, params, activations)
    parts = f"{params:,} parameters, {activations:,} activations per image at batch size {config.train.batch_size}"
    if device.type != "cpu":  # on the CPU the data are in memory already; elsewhere they are copied there
        splits = [s for s in (data.train, data.valid, data.test) if s is not None]
        data_need = tensor_bytes(*(s.storage for s in splits), *(s.y for s in splits))
        need += data_need
        parts += f", the data {format_bytes(data_need)}"
    if need > free:
        raise ConfigError(
            f"training this model needs about {format_bytes(need)} ({parts}) but {device} has "
            f"{format_bytes(free)} free; make it smaller: narrower or fewer hidden layers (hidden, --hidden), "
            "smaller images (image_size, --image-size, for folder: data), a convolutional network "
            "(architecture 'conv', --architecture conv) or a smaller batch_size (--batch-size)")


def completed_epochs(run_dir: Path) -> int | None:
    """How many epochs the run's training state has completed (None without a training state)."""
    try:
        _, progress, _ = ckpt.load_train_state(run_dir)
    except ckpt.CheckpointError:
        return None
    return int(progress.get("epoch", 0))


def plan_run(*, out: str | Path | None = None, resume: str | Path | None = None,
             config: RunConfig | str | Path | None = None, preset: str | None = None,
             overrides: dict[str, Any] | None = None, conditional: bool = False, data: Dataset | None = None,
             overwrite: bool = False, own_networks: bool = False) -> RunPlan:
    """The configuration and run directory of a run to train (see the module docstring).

    ``config``: a ``RunConfig`` or the path of a config.json to start from; ``overrides``: settings by
    field name (``dataset``, ``epochs``, ``model``, ...), applied after ``preset``; ``conditional``:
    condition on the data set's labels; ``data``: an already loaded data set; ``overwrite``: replace
    a run already in ``out``; ``own_networks``: the model will use networks of your own (the
    memory check leaves their size out).
    """
    overrides = _family_name(dict(overrides or {}))
    if resume is not None:
        if out is not None or config is not None or preset is not None or conditional or "dataset" in overrides:
            raise ConfigError("a resumed run takes its own settings; do not also give an output folder, a data set, "
                              "a configuration, a preset or conditional")
        extra = sorted(set(overrides) - set(RESUMABLE))
        if extra:
            raise ConfigError(f"a resumed run keeps its settings; only {', '.join(RESUMABLE)} may change "
                              f"(got {', '.join(extra)})")
        run_dir = Path(resume)
        saved = ckpt.read_config(run_dir)
        done = completed_epochs(run_dir)
        if done is not None and "epochs" in overrides and overrides["epochs"] < done:
            raise ConfigError(f"{run_dir} has already trained {done} epochs; epochs must be at least {done} "
                              f"(got {overrides['epochs']})")
        config = apply_overrides(saved, overrides)
        resolve_device(config.train.device)  # a device this machine lacks: refused before any work
        ckpt.check_writable(run_dir)
        return RunPlan(config, run_dir, resume=True, data=data)

    if isinstance(config, (str, Path)):
        config = RunConfig.load(config)
    if "dataset" in overrides:
        from .data.custom import absolute

        overrides["dataset"] = absolute(overrides["dataset"])  # a run directory must not depend on the cwd
    given = config is not None
    if config is None:
        config = default_config(overrides.get("dataset", "digits"))
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        overrides = {**PRESETS[preset], **overrides}
    choose_binarize = not given and "binarize" not in overrides  # default_binarize, once the data is read
    config = apply_overrides(config, overrides)
    if choose_binarize:
        config = replace(config, data=replace(config.data, binarize="none"))
    resolve_device(config.train.device)  # a device this machine lacks: refused before any work
    run_dir = Path(out) if out is not None else default_out(config.data.dataset)
    check_out(run_dir, overwrite)  # before the data are read: that may take a while
    if data is None:
        data = load_dataset(config.data)
    if choose_binarize:
        from .data.registry import binarize

        mode = default_binarize(config.model.likelihood, data.binary)
        config, data = replace(config, data=replace(config.data, binarize=mode)), binarize(data, mode)
    fitted: dict[str, Any] = {}
    if "input_shape" not in overrides:
        fitted["input_shape"] = data.shape  # the model takes the data's (C, H, W)
    if conditional and "num_classes" not in overrides:
        from .conditional import num_classes_of

        fitted["num_classes"] = num_classes_of(data)
    if fitted:
        config = replace(config, model=replace(config.model, **fitted))
    check_memory(config, data, own_networks)
    if overwrite and run_dir.is_dir() and is_run(run_dir):
        clear_run(run_dir)
    return RunPlan(config, run_dir, resume=False, data=data)
