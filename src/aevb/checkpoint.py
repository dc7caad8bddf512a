"""Run directories: save and load models and training state as safetensors + JSON.

A run directory holds

- ``config.json``          the ``RunConfig`` (model, data, training);
- ``model.safetensors``    the model's weights;
- ``train_state.safetensors`` everything needed to continue exactly: weights, optimizer
  tensors, random-generator states, and (in the file's metadata, as JSON) the epoch,
  step and optimizer hyperparameters;
- ``metrics.jsonl``        one JSON object per epoch;
- ``best.safetensors``     the weights of the epoch with the best validation ELBO (its epoch and
  score in the metadata): ``load(run_dir, which="best")``;
- ``evaluation.json``      the latest ``aevb evaluate`` (its settings and every metric);
- ``figures/``             samples and reconstructions drawn during training (``figures_every``);
- ``sampler-NAME.safetensors`` + ``sampler-NAME.json``  a sampler fitted on the codes (``aevb fit-prior``,
  ``aevb.samplers``): its tensors, and its kind, options, seed and the weights it was fitted on.

Everything that reads or writes a run directory is here: the trainer calls these functions and
does no file I/O of its own. Nothing is pickled. Every file is written to a temporary file, fsynced, and renamed
into place, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import ConfigError, RunConfig
from .devices import resolve_device
from .models import build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
METRICS = "metrics.jsonl"
BEST = "best.safetensors"
EVALUATION = "evaluation.json"
SAMPLER = "sampler-{}"  # + .safetensors (tensors) and .json (what it is): a fitted sampler of aevb.samplers
FIGURES = "figures"
WHICH = ("last", "best")  # the weights load() reads: model.safetensors or best.safetensors


class CheckpointError(ValueError):
    """A run directory or checkpoint file is missing, incompatible, or not ours."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file renamed into place. An ``OSError``
    (a full disk, a read-only folder, a path below a file) names ``path`` and leaves no temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary write would (mkstemp makes 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` as the same kind of OSError naming ``path`` (not a temporary file's name)."""
    return type(e)(e.errno, e.strerror or str(e), str(path))


PROBE_BYTES = 1 << 16


def check_writable(folder: str | Path) -> None:
    """Raise an ``OSError`` naming ``folder`` unless files can be written there: the nearest existing
    folder on its path takes a 64 KiB probe file (removed at once). Creates nothing, so a command can
    check its output before it computes."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # "a/b" -> "a" -> "." (relative paths stay as the user wrote them)
    if not existing.is_dir():
        what = "it is" if existing == folder else f"{existing} is"
        raise NotADirectoryError(errno.ENOTDIR, f"{what} a file, not a folder", str(folder))
    try:
        fd, probe = tempfile.mkstemp(prefix=".aevb-write-check.", dir=existing)
    except OSError as e:
        raise _naming(e, folder) from None
    try:
        os.write(fd, bytes(PROBE_BYTES))
    except OSError as e:
        raise _naming(e, folder) from None
    finally:
        os.close(fd)
        os.unlink(probe)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _cpu_tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


def save_model(run_dir: str | Path, model: torch.nn.Module, config: RunConfig) -> None:
    """Write config.json and the weights. When the weights cannot be written into a new run
    directory, the config.json just written is removed again: no lone config.json is left."""
    run_dir = Path(run_dir)
    new = not (run_dir / CONFIG).exists()
    atomic_write(run_dir / CONFIG, config.to_json().encode())
    try:
        atomic_write(run_dir / WEIGHTS, st_save(_cpu_tensors(unwrap(model).state_dict()), {"format": "pt"}))
    except OSError:
        if new:
            (run_dir / CONFIG).unlink(missing_ok=True)
        raise


def save_best(run_dir: str | Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Keep ``model``'s weights as the run's best, with ``info`` (epoch, score key and value) in the metadata."""
    tensors = _cpu_tensors(unwrap(model).state_dict())
    atomic_write(Path(run_dir) / BEST, st_save(tensors, {"format": "pt", "best": json.dumps(info)}))


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    """What ``save_best`` recorded beside the best weights (epoch, score key and value); None without them."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        return None
    _, meta = read_safetensors(path)
    try:
        return json.loads(meta["best"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the best epoch's metadata is missing or corrupt ({e})") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a clear error for anything else."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return _parse_safetensors(path.read_bytes(), path)


def _parse_safetensors(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the safetensors bytes ``data`` (read from ``path``, named in errors)."""
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} {_what_is_wrong(data, e)}") from None
    return tensors, header.get("__metadata__") or {}


PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a raw pickle (protocol 2+)


def _what_is_wrong(data: bytes, error: Exception) -> str:
    """Why ``data`` is not a whole safetensors file: empty, cut short, a pickle, or something else."""
    if not data:
        return "is empty (0 bytes); the write that made it was interrupted: train again or restore a copy"
    if data.startswith(PICKLE_SIGNATURES):
        return "is a pickled (torch.save) checkpoint, not a safetensors file; aevb never loads pickled checkpoints"
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else None
    if n is not None and 8 + n <= len(data):
        try:
            header = json.loads(data[8 : 8 + n])
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
            header, end = None, None
        if end is not None and 8 + n + end > len(data):
            return (f"is truncated: it has {len(data)} bytes of the {8 + n + end} its header describes; it was "
                    "cut short (a full disk or a copy that stopped): train again or restore a copy")
    elif n is not None and n < (1 << 27):  # a plausible header length longer than the file
        return (f"is truncated: its header alone should be {n} bytes, and the file has {len(data)}; it was cut "
                "short (a full disk or a copy that stopped): train again or restore a copy")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"is not a safetensors file ({first}); it is corrupt or was written by another program"


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory; pass a run directory (the folder a training run writes)")
    path = run_dir / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {CONFIG}; it is not an aevb run directory")
    try:
        return RunConfig.load(path)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", trust_code: bool = False,
               networks: Mapping[str, type] | None = None, which: str = "last") -> tuple[torch.nn.Module, RunConfig]:
    """The run's model in eval mode on ``device`` ("auto" picks one), and its configuration.
    ``which``: "last" (model.safetensors) or "best" (best.safetensors, the best validation ELBO).
    ``trust_code``/``networks``: for a run with your own networks (``aevb.models.build_model``)."""
    run_dir = Path(run_dir)
    if which not in WHICH:
        raise CheckpointError(f"which must be one of {', '.join(WHICH)}; got {which!r}")
    config = read_config(run_dir)
    weights = run_dir / (WEIGHTS if which == "last" else BEST)
    if which == "best" and not weights.is_file():
        raise CheckpointError(f"{run_dir} has no {BEST}: no epoch has finished yet, or the run was trained by an "
                              "aevb that kept no best checkpoint; load the last weights instead")
    model = build_model(config.model, trust_code=trust_code, networks=networks)
    tensors, _ = read_safetensors(weights)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{weights} does not match {CONFIG} ({first})") from None
    return model.to(resolve_device(device)).eval(), config


# --- training state ------------------------------------------------------------------


# Optimizer settings that say how the update is computed, not what it is: a restored optimizer keeps
# its own (a fused kernel saved on one device may not exist on the device the run resumes on).
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and the JSON rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Load the saved state into ``opt``; ``opt`` keeps its own ``IMPLEMENTATION_FLAGS``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = [dict(saved) for saved in meta["param_groups"]]
    for saved, own in zip(groups, opt.param_groups):
        saved.update({k: own[k] for k in IMPLEMENTATION_FLAGS if k in own})
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_train_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     extra_tensors: dict[str, torch.Tensor], progress: dict[str, Any], *,
                     generator: torch.Generator | None = None, scaler=None,
                     schedule: dict[str, Any] | None = None,
                     auxiliary: dict[str, torch.optim.Optimizer] | None = None) -> None:
    """Write the training state: weights, optimizer, ``extra_tensors``, the ``progress`` counters;
    the noise ``generator``'s state with its device type (a CPU and a CUDA state differ in kind);
    a gradient ``scaler``'s state (fp16); the learning-rate ``schedule``'s state
    (``aevb.lr_schedules.LRSchedule.state_dict``), as JSON; a family's ``auxiliary`` optimizers
    (``LatentVariableModel.auxiliary_optimizers``) under ``aux.NAME.``."""
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    tensors.update(opt_tensors)
    tensors.update(extra_tensors)
    meta = {"progress": json.dumps(progress), "optimizer": json.dumps(opt_meta)}
    for name, opt in (auxiliary or {}).items():
        aux_tensors, aux_meta = optimizer_to_flat(opt)
        tensors.update({f"aux.{name}.{k}": v for k, v in aux_tensors.items()})
        meta[f"aux.{name}"] = json.dumps(aux_meta)
    if generator is not None:
        tensors["rng.noise"] = generator.get_state()
        meta["rng_device"] = generator.device.type
    if scaler is not None:
        meta["scaler"] = json.dumps(scaler.state_dict())
    if schedule is not None:
        meta["lr_schedule"] = json.dumps(schedule)
    atomic_write(Path(run_dir) / TRAIN_STATE, st_save(_cpu_tensors(tensors), meta))


def read_train_state_bytes(run_dir: str | Path) -> bytes:
    """The raw training-state file of a run (what rank 0 reads and sends to the other processes)."""
    path = Path(run_dir) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run cannot be resumed (it finished without training state, "
                              "or never reached its first checkpoint)")
    return path.read_bytes()


def _json_meta(path: Path, meta: dict[str, str], key: str, default: Any = ...) -> Any:
    """The JSON metadata entry ``key`` (``default`` when absent, if given)."""
    try:
        return json.loads(meta[key]) if (key in meta or default is ...) else default
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: training-state metadata is missing or corrupt ({e})") from None


def _train_state(run_dir: str | Path, data: bytes | None = None):
    """(tensors, progress, optimizer metadata, all metadata, path) from the file, or from its bytes ``data``."""
    path = Path(run_dir) / TRAIN_STATE
    tensors, meta = _parse_safetensors(read_train_state_bytes(run_dir) if data is None else data, path)
    return tensors, _json_meta(path, meta, "progress"), _json_meta(path, meta, "optimizer"), meta, path


def load_train_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, progress, optimizer metadata) of a run's training state."""
    tensors, progress, opt_meta, _, _ = _train_state(run_dir)
    return tensors, progress, opt_meta


@dataclass
class TrainState:
    """What ``restore_train_state`` gives back beside the restored model, optimizer and generator:
    the progress counters, the partial epoch's metric sums, the learning-rate schedule's state (None
    for a constant rate), and whether the noise generator was re-seeded (a state saved on another
    kind of device)."""

    progress: dict[str, Any]
    sums: dict[str, torch.Tensor]
    schedule: dict[str, Any] | None = None
    noise_reseeded: bool = False


def reseed_noise(generator: torch.Generator, step: int) -> None:
    """Seed ``generator`` from its own first seed and the step a run resumes at: the noise of a run
    resumed on another kind of device (a CPU generator's state means nothing to a CUDA one). The run
    stays reproducible (the same run resumed the same way draws the same noise), but it is not the
    noise the original device would have drawn."""
    generator.manual_seed((generator.initial_seed() * 1_000_003 + step) % 2**63)


def restore_train_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator, device: torch.device, *, scaler=None,
                        data: bytes | None = None,
                        auxiliary: dict[str, torch.optim.Optimizer] | None = None) -> TrainState:
    """Load a run's training state into ``model``, ``optimizer``, the noise ``generator`` and a
    gradient ``scaler`` (fp16); ``data``: the training-state file's bytes, already read (else it is
    read from ``run_dir``). A generator state saved on another device type (or, in a file from
    before device tags, of another size) is replaced by ``reseed_noise``."""
    tensors, progress, opt_meta, meta, path = _train_state(run_dir, data)
    unwrap(model).load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_flat(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, opt_meta)
    for name, opt in (auxiliary or {}).items():
        prefix = f"aux.{name}."
        if f"aux.{name}" not in meta:
            raise CheckpointError(f"{path}: the training state has no state for the model's optimizer {name!r}; "
                                  "it was saved by another model")
        optimizer_from_flat(opt, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                            _json_meta(path, meta, f"aux.{name}"))
    state = tensors["rng.noise"]
    saved_on = meta.get("rng_device")
    same_kind = saved_on == generator.device.type if saved_on else state.numel() == generator.get_state().numel()
    if same_kind:
        generator.set_state(state)
    else:
        reseed_noise(generator, int(progress.get("global_step", 0)))
        warnings.warn(f"{path}: the noise generator was saved on {saved_on or 'another device'} and this run is on "
                      f"{generator.device.type}; it continues with noise re-seeded from the step (reproducible, "
                      "but not the draws the first device would have made)", stacklevel=2)
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(json.loads(meta["scaler"]))
    sums = {k[len("sums."):]: v.to(device) for k, v in tensors.items() if k.startswith("sums.")}
    return TrainState(progress, sums, _json_meta(path, meta, "lr_schedule", None), noise_reseeded=not same_kind)


def remove_temporaries(run_dir: str | Path) -> None:
    """Delete the temporary files of writes that a crash interrupted (``atomic_write``'s ``*.tmp``)."""
    for stale in Path(run_dir).glob("*.tmp"):
        stale.unlink()


def append_metrics(run_dir: str | Path, line: dict[str, Any]) -> None:
    """Add one line to metrics.jsonl; a write that fails (a full disk) leaves the file as it was."""
    path = Path(run_dir) / METRICS
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if path.exists():
            os.truncate(path, size)  # no half line
        raise _naming(e, path) from None


def truncate_metrics(run_dir: str | Path, n_lines: int) -> None:
    """Keep the first ``n_lines`` of metrics.jsonl: the lines a checkpoint knew of (a resumed run
    drops the epochs written after its last checkpoint)."""
    path = Path(run_dir) / METRICS
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)[:n_lines]
        atomic_write(path, "".join(lines).encode())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_figure(run_dir: str | Path, name: str, png: bytes) -> Path:
    """Write a figure drawn during training as RUN_DIR/figures/NAME and return its path."""
    path = Path(run_dir) / FIGURES / name
    atomic_write(path, png)
    return path


def write_evaluation(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (``aevb.evaluate.evaluation_record``) as RUN_DIR/evaluation.json, replacing the last one."""
    path = Path(run_dir) / EVALUATION
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def read_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's latest evaluation (RUN_DIR/evaluation.json), or None when it was never evaluated."""
    path = Path(run_dir) / EVALUATION
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); run aevb evaluate again to rewrite it") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; run aevb evaluate again to rewrite it")
    return record


# --- fitted samplers -------------------------------------------------------------------

_SAMPLER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def _sampler_paths(run_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(RUN_DIR/sampler-NAME.safetensors, RUN_DIR/sampler-NAME.json)."""
    if not _SAMPLER_NAME.fullmatch(name):
        raise CheckpointError(f"a sampler name is lower-case letters, digits and dashes; got {name!r}")
    stem = Path(run_dir) / SAMPLER.format(name)
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def weights_digest(run_dir: str | Path, which: str = "last") -> str | None:
    """The SHA-256 of the run's weights file (model.safetensors or best.safetensors); None when it is missing."""
    path = Path(run_dir) / (WEIGHTS if which == "last" else BEST)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def save_sampler(run_dir: str | Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a fitted sampler as RUN_DIR/sampler-NAME.safetensors (``tensors``) and then RUN_DIR/sampler-NAME.json
    (``meta`` and the SHA-256 of the tensors file, so that a pair torn by a crash between the two writes is
    recognised); returns the JSON's path."""
    st_path, json_path = _sampler_paths(run_dir, name)
    data = st_save(_cpu_tensors(tensors), {"format": "pt"})
    atomic_write(st_path, data)
    record = {**meta, "tensors_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(json_path, (json.dumps(record, indent=2) + "\n").encode())
    return json_path


def load_sampler(run_dir: str | Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of the run's fitted sampler NAME; a ``CheckpointError`` naming ``aevb fit-prior`` when the
    run has none, or when its two files do not belong together."""
    st_path, json_path = _sampler_paths(run_dir, name)
    refit = f"aevb fit-prior {run_dir} --sampler {name}"
    if not json_path.is_file() or not st_path.is_file():
        raise CheckpointError(f"{run_dir} has no fitted {name} sampler; fit one with: {refit}")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); fit it again with: {refit}") from None
    data = st_path.read_bytes()
    if not isinstance(meta, dict) or meta.get("tensors_sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"{st_path} does not match {json_path.name} (a fit was interrupted, or a file was "
                              f"replaced); fit it again with: {refit}")
    tensors, _ = _parse_safetensors(data, st_path)
    return tensors, meta


def fitted_samplers(run_dir: str | Path) -> list[str]:
    """The names of the samplers fitted in a run (those with both files), sorted."""
    names = []
    for path in sorted(Path(run_dir).glob(SAMPLER.format("*") + ".json")):
        name = path.stem[len(SAMPLER.format("")):]
        if _SAMPLER_NAME.fullmatch(name) and path.with_suffix(".safetensors").is_file():
            names.append(name)
    return names
