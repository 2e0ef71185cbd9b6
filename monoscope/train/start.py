"""The start of a run: a new SAE started from a sample of the data, or the one a checkpoint
holds, with the settings it began with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from monoscope.distributed import World
from monoscope.sae import SAEConfig, build_sae
from monoscope.sae.sharded import ShardedTopKSAE, Trainable
from monoscope.sae.training import SampleStart
from monoscope.train.basis import Rotation, rotate_sae
from monoscope.train.checkpoint import TrainingState
from monoscope.train.config import TrainConfig, from_older_version
from monoscope.train.parallel import broadcast_tensors

INIT_SAMPLE = 16_384
"""Rows that set the input scale and the data-dependent start."""
LOCATION_SETTINGS = ("acts", "out", "device", "nproc", "prefetch")
"""TrainConfig fields that say where things are or run, not what the run computes (a run may
resume on another device or number of processes: the same SAE within rounding)."""


@dataclass
class Start:
    """What a run begins from: its resolved settings, its SAE (with --shard-features, this
    process's slice of it) and (in the eigenbasis) the rotation the SAE and the batches are
    in."""

    cfg: TrainConfig
    sae: Trainable
    rotation: Rotation | None


def init_sample(source, max_norm: float | None) -> torch.Tensor:
    """The first train rows [<= INIT_SAMPLE, d] within the outlier limit."""
    sample = source.sample(INIT_SAMPLE)
    return sample if max_norm is None else sample[sample.norm(dim=-1) <= max_norm]


def new_start(
    requested: TrainConfig,
    source,
    max_norm: float | None,
    world: World | None = None,
    device: torch.device | None = None,
) -> Start:
    """A freshly initialised SAE started from a sample of `source`, on the CPU (with
    --shard-features, this process's slice of it in `world`, the same slice of the same
    start, on `device`: its start takes collectives, which NCCL runs on GPUs only), and for
    --adam-basis eigen the rotation it is put in."""
    cfg = requested.resolved(requested.n_features(source.d))
    sample = init_sample(source, max_norm)
    rotation = Rotation.eigen(sample) if cfg.adam_basis == "eigen" else None
    sae_cfg = SAEConfig(
        arch=cfg.arch,
        d_in=source.d,
        n_features=cfg.n_features(source.d),
        k=cfg.k,
        site=source.site,
        model=source.model,
        compute_dtype=cfg.compute_dtype,
        input_scale=input_scale(sample),  # known before a slice copies the config
    )
    sae: Trainable
    if cfg.shard_features:
        assert world is not None and device is not None
        sample = sample.to(device)
        if rotation is not None:  # process 0's: every slice is rotated alike
            rotation = rotation.to(device)
            broadcast_tensors(list(rotation.tensors().values()), world)
        sae = ShardedTopKSAE(sae_cfg, world).to(device)
        sae.init_slice(cfg.seed)
    else:
        sae = build_sae(sae_cfg, seed=cfg.seed)
    start_from_sample(sae, cfg, sample)
    if rotation is not None:
        rotate_sae(sae, rotation.matrix())
    return Start(cfg, sae, rotation)


def input_scale(sample: torch.Tensor) -> float:
    """The dataset-wide scalar that makes E||x||_2 = sqrt(d) over raw rows [n, d] (April 2024
    update)."""
    mean_norm = float(sample.norm(dim=-1).mean()) if sample.shape[0] else 0.0
    if mean_norm == 0:
        raise ValueError("the training activations are all zero: there is nothing to learn")
    return math.sqrt(sample.shape[1]) / mean_norm


def start_from_sample(sae: Trainable, cfg: TrainConfig, sample: torch.Tensor) -> None:
    """Set the input scale, b_dec and the architecture's data-dependent start as `cfg` asks,
    from raw activations [n, d_in] (the trainer's start; benchmarks/train.py starts its SAEs
    with it too)."""
    cfg = cfg.resolved()
    sae.cfg.input_scale = input_scale(sample)
    if cfg.b_dec_init == "median":
        sae.init_b_dec(sample)  # Bricken et al. 2023, Gao et al. 2024
    settings = {name: getattr(cfg, name) for name in type(sae).start_settings}
    sae.start_from_sample(sample, SampleStart(**settings))


def resumed_start(
    state: TrainingState,
    requested: TrainConfig,
    data_id: str,
    data: Mapping[str, object],
    out: Path,
    world: World | None = None,
) -> Start:
    """The run a checkpoint in `out` holds, refused if it was begun with other settings or on
    other data than `data` (whose fingerprint is `data_id`); it goes on with the defaults it
    started with, should this version's differ. Its SAE (with --shard-features, this process's
    slice of it in `world`) is as initialised: the checkpoint's weights are restored into it
    later."""
    changed = changed_settings(state.scalars["train_config"], requested)
    if changed:
        raise ValueError(
            f"{out} holds a checkpoint of a run with other settings ({'; '.join(changed)}): "
            "pass --overwrite to start over, or rerun with the same options"
        )
    if state.scalars.get("data_fingerprint", data_id) != data_id:
        raise ValueError(
            f"{out} holds a checkpoint of a run on other data than {data}: "
            "the activations changed since; pass --overwrite to start over"
        )
    # Checkpoints written before the defaults were recorded go on with this version's;
    # before --idle-momentum, every run kept the momentum.
    recorded = from_older_version(state.scalars.get("resolved_defaults", {}))
    cfg = replace(requested, **({"idle_momentum": "keep"} | recorded)).resolved()
    saved = SAEConfig.from_json(state.scalars["sae"])
    sae: Trainable
    if cfg.shard_features:
        assert world is not None
        sae = ShardedTopKSAE(saved, world)
    else:
        sae = build_sae(saved)
    return Start(cfg, sae, Rotation.from_tensors(state.tensors))


def changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """The settings in which a checkpoint's run differs from `cfg`, as 'name: saved -> now'.
    A setting the checkpoint lacks (one added since it was written) matches only at its
    default: then the run it belongs to behaves the same under this version."""
    current = recorded_settings(cfg)
    # Where the data and the run live is recorded, not compared: a store reached by another
    # path, moved or copied is the same data, which `data_fingerprint` checks by content.
    saved = {k: v for k, v in from_older_version(saved).items() if k not in LOCATION_SETTINGS}
    current = {k: v for k, v in current.items() if k not in LOCATION_SETTINGS}
    defaults = asdict(TrainConfig())
    # The same schedule whether the decay is left to its default or given as that default.
    current["decay_fraction"] = _decay(current)
    saved = saved | {"decay_fraction": _decay(defaults | saved)}
    unknown = [f"{name}: unknown to this version" for name in saved.keys() - current.keys()]
    return unknown + [
        f"{name.replace('_', '-')}: {saved.get(name, defaults[name])!r} -> {value!r}"
        for name, value in current.items()
        if saved.get(name, defaults[name]) != value
    ]


def recorded_settings(cfg: TrainConfig) -> dict:
    """The requested settings as a checkpoint records them (how the run is shown is not
    part of what it computes)."""
    return asdict(cfg) | {"overwrite": False, "progress": False}


def _decay(settings: dict) -> float:
    """The decay fraction a run's requested settings resolve to."""
    chosen = {name: settings[name] for name in ("decay_fraction", "weight_average")}
    return replace(TrainConfig(), **chosen).resolved_defaults()["decay_fraction"]
