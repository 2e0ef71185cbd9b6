"""The training loop: batches -> SAE steps with the recipe's schedules, logging, checkpoints.

A run killed at any point and started again with the same command continues from its last
checkpoint and ends bit-identical to an uninterrupted run: the data order is a pure function of
the seed and the step, and the checkpoint holds every piece of mutable state.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from monoscope.artifacts import remove_write_debris
from monoscope.folders import first_missing, remove_empty_folders
from monoscope.runtime import configure_threads
from monoscope.sae import SAEConfig, SparseAutoencoder, TrainStep, build_sae
from monoscope.sae.files import formats_in
from monoscope.sae.step_memory import StepMemory
from monoscope.train.average import WeightAverage
from monoscope.train.basis import Rotation, rotate_sae
from monoscope.train.checkpoint import (
    POINTER,
    TrainingState,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from monoscope.train.config import TrainConfig
from monoscope.train.dead import DeadLatentTracker
from monoscope.train.idle import IdleMomentumReset
from monoscope.train.loggers import MetricLogger, read_metrics, require_backend
from monoscope.train.memory import return_large_blocks_when_freed
from monoscope.train.refit import check_memory as check_refit_memory
from monoscope.train.refit import refit_decoder
from monoscope.train.schedules import coefficient_warmup, learning_rate
from monoscope.train.sources import ModelSource, open_source
from monoscope.train.step import apply_gradients
from monoscope.train.target_l0 import L0Controller

_INIT_SAMPLE = 16_384  # rows used to estimate the input scale and initialise b_dec
_L0_SAMPLE = 4096  # rows of it that set relu's starting b_enc for --target-l0


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run between two steps, after a checkpoint of the last."""


@contextlib.contextmanager
def _stop_requests() -> Iterator[Callable[[], str | None]]:
    """While open, SIGINT and SIGTERM (Ctrl-C; a scheduler's preemption) only record their
    name, which the loop reads between steps to checkpoint the step it just finished and stop:
    nothing since the last periodic checkpoint is lost. A second SIGINT stops at once. Signal
    handlers can only be set from the main thread: elsewhere signals act as they would."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[str] = []

    def handler(signum: int, frame: object) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _batches(source, cfg: TrainConfig, max_norm: float | None) -> Iterator[torch.Tensor]:
    """Endless batches: epoch e is shuffled with seed (cfg.seed, e)."""
    for epoch in itertools.count():
        yielded = False
        for batch in source.epoch(cfg.batch_size, cfg.seed * 100_003 + epoch, max_norm):
            yielded = True
            yield batch
        if not yielded:
            skipped = (
                f" once tokens over {cfg.outlier_multiple:g}x the median norm are skipped"
                " (--outlier-multiple)"
                if max_norm is not None
                else ""
            )
            raise ValueError(
                f"no full batch of {cfg.batch_size} tokens in the training data{skipped}: "
                "lower --batch-size"
            )


RUN_MARKS = (POINTER, "train_log.jsonl")
"""Files that make a folder a training run (with a trained SAE's files, `formats_in`)."""


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    held = formats_in(out) if out.is_dir() else []
    foreign = out.is_dir() and not held and not any((out / m).exists() for m in RUN_MARKS)
    if foreign and any(out.iterdir()):
        # Not even --overwrite: it would delete a folder monoscope did not write.
        found = sorted(p.name for p in out.iterdir())
        names = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise FileExistsError(
            f"{out} exists and is not a training run this monoscope writes (it holds {names}, "
            f"and no {POINTER} or trained SAE); choose another --out, or a new or empty folder"
        )
    if held and not (out / POINTER).exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a trained SAE ({', '.join(held)} format): "
                "pass --overwrite to replace it"
            )
        shutil.rmtree(out)
    elif overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_write_debris(out)  # a run killed inside an atomic write leaves its temp file


@contextlib.contextmanager
def _removed_if_failed_early(out: Path) -> Iterator[None]:
    """If the body fails before a checkpoint or the SAE is written to `out`, and `out` is a
    folder this run created, remove it (and the parents it created): nothing in it could be
    resumed. A folder that existed before the run is left as it is."""
    created = first_missing(out)
    try:
        yield
    except BaseException:
        kept = (out / POINTER).exists() or formats_in(out)
        if created is not None and out.is_dir() and not kept:
            shutil.rmtree(out, ignore_errors=True)  # the error that got us here matters more
            remove_empty_folders(out.parent, created)
        raise


def _init_sample(source, max_norm: float | None) -> torch.Tensor:
    """The first train rows [<= _INIT_SAMPLE, d] within the outlier limit."""
    sample = source.sample(_INIT_SAMPLE)
    return sample if max_norm is None else sample[sample.norm(dim=-1) <= max_norm]


def _new_sae(
    cfg: TrainConfig, source, max_norm: float | None
) -> tuple[SparseAutoencoder, Rotation | None]:
    """A freshly initialised SAE and, for --adam-basis eigen, the rotation it is put in."""
    n_features = cfg.n_features(source.d)
    sae_cfg = SAEConfig(
        arch=cfg.arch,
        d_in=source.d,
        n_features=n_features,
        k=cfg.k_value() if cfg.arch in ("topk", "batchtopk") else None,
        site=source.site,
        model=source.model,
        compute_dtype=cfg.compute_dtype,
    )
    sae = build_sae(sae_cfg, seed=cfg.seed)
    sample = _init_sample(source, max_norm)
    start_from_sample(sae, cfg, sample)
    if cfg.adam_basis_value() != "eigen":
        return sae, None
    rotation = Rotation.eigen(sample)
    rotate_sae(sae, rotation.matrix())
    return sae, rotation


def start_from_sample(sae: SparseAutoencoder, cfg: TrainConfig, sample: torch.Tensor) -> None:
    """Set the input scale and the data-dependent start `cfg` asks for from raw activations
    [n, d_in] (the trainer's start; benchmarks/train.py starts its SAEs with it too)."""
    mean_norm = float(sample.norm(dim=-1).mean()) if sample.shape[0] else 0.0
    if mean_norm == 0:
        raise ValueError("the training activations are all zero: there is nothing to learn")
    # April 2024 update: one dataset-wide scalar so that E‖x‖₂ = √d.
    sae.cfg.input_scale = math.sqrt(sae.cfg.d_in) / mean_norm
    if cfg.b_dec_init_value() == "median":
        sae.init_b_dec(sample)  # Bricken et al. 2023, Gao et al. 2024
    if cfg.arch in ("topk", "batchtopk"):
        if cfg.decoder_init_power_value() > 0:
            sae.shape_decoder_directions(sample, cfg.decoder_init_power_value())
        sae.init_encoder_scale(sample)  # after b_dec: the fit is about x - b_dec
        sae.start_below_firing_cuts(sample, cfg.b_enc_init_share_value())
    if cfg.arch in ("relu", "jumprelu") and cfg.target_l0:
        sae.start_at_l0(sample[:_L0_SAMPLE], cfg.target_l0)


def run(cfg: TrainConfig) -> SparseAutoencoder:
    """Train an SAE as `cfg` says; resume from the checkpoint at cfg.out if there is one."""
    configure_threads()
    return_large_blocks_when_freed()  # peak memory: see monoscope.train.memory
    require_backend(cfg.logger)  # a missing optional package fails before anything is done
    if cfg.stream_model:
        # The shuffle buffer need not hold more than the run trains on: a short run would
        # otherwise harvest the whole buffer (131k tokens) before its first step.
        buffer = min(ModelSource.BUFFER_TOKENS, max(cfg.tokens, cfg.batch_size))
        source = ModelSource(
            cfg.stream_model, cfg.site, cfg.corpus, cfg.context, buffer_tokens=buffer
        )
    else:
        source = open_source(cfg.acts, cfg.site or None)
    tokens = cfg.tokens or source.n_train_tokens()
    if tokens == 0:
        raise ValueError(f"{cfg.acts} holds no training rows")
    total_steps = tokens // cfg.batch_size
    if total_steps < 1:
        raise ValueError(f"{tokens} tokens make no step of {cfg.batch_size}: lower --batch-size")
    _check_sparsity(cfg, cfg.n_features(source.d), total_steps * cfg.batch_size)
    out = Path(cfg.out)
    with _removed_if_failed_early(out):
        _prepare_out(out, cfg.overwrite)
        return _train(cfg, source, out, total_steps)


def _train(cfg: TrainConfig, source, out: Path, total_steps: int) -> SparseAutoencoder:
    """The run itself, in the prepared folder `out`: new or resumed, trained, saved."""
    median = source.median_norm()
    max_norm = cfg.outlier_multiple * median if cfg.outlier_multiple > 0 else None

    state = load_checkpoint(out)
    requested, cfg = cfg, cfg.with_defaults_resolved()
    rotation = None
    data_id = source.fingerprint()
    if state is not None:
        rotation = Rotation.from_tensors(state.tensors)
        sae = build_sae(SAEConfig.from_json(state.scalars["sae"]))
        changed = _changed_settings(state.scalars["train_config"], requested)
        if changed:
            raise ValueError(
                f"{out} holds a checkpoint of a run with other settings ({'; '.join(changed)}): "
                "pass --overwrite to start over, or rerun with the same options"
            )
        if state.scalars.get("data_fingerprint", data_id) != data_id:
            raise ValueError(
                f"{out} holds a checkpoint of a run on other data than {source.description}: "
                "the activations changed since; pass --overwrite to start over"
            )
        # The defaults the run started with, should this version's differ (checkpoints
        # written before they were recorded go on with this version's; before
        # --idle-momentum, every run kept it).
        resolved = {"idle_momentum": "keep"} | state.scalars.get("resolved_defaults", {})
        cfg = replace(cfg, **resolved)
    else:
        sae, rotation = _new_sae(cfg, source, max_norm)
    # fused: one kernel over all parameters; 6 ms against 45 ms per step for a 16x SAE here.
    betas = (cfg.adam_beta1_value(), 0.999)
    decoder_multiple = cfg.decoder_lr_multiple_value()
    groups = [
        {"params": [p for p in sae.parameters() if p is not sae.W_dec], "lr_multiple": 1.0},
        {"params": [sae.W_dec], "lr_multiple": decoder_multiple},
    ]
    opt = torch.optim.Adam(groups, lr=cfg.lr_value(), betas=betas, fused=True)
    reset_idle = IdleMomentumReset(sae, opt) if cfg.idle_momentum_value() == "reset" else None
    tracker = DeadLatentTracker(sae.cfg.n_features, cfg.dead_window)
    controller = L0Controller(cfg.target_l0, cfg.coefficient_value()) if cfg.target_l0 else None
    average = (
        WeightAverage(sae, max(1.0, cfg.weight_average * total_steps))
        if cfg.weight_average
        else None
    )
    start = 0
    if state is not None:
        sae.load_state_dict({k[4:]: v for k, v in state.tensors.items() if k.startswith("sae.")})
        restore_optimizer(opt, state.tensors, state.scalars["adam_groups"])
        tracker.tokens_since_fired = state.tensors["dead.tokens_since_fired"].clone()
        if controller is not None:
            controller.load_state(state.scalars["controller"])
        start = state.step
        if average is not None:
            average.load(state.tensors, updates=start)
        if cfg.progress:
            print(f"resuming {out} at step {start} of {total_steps}", file=sys.stderr)

    logger = MetricLogger(
        out / "train_log.jsonl", cfg.logger, resume_step=start, config=asdict(cfg)
    )
    batches = itertools.islice(_batches(source, cfg, max_norm), start, None)
    bar = tqdm(
        total=total_steps, initial=start, unit="step", disable=not cfg.progress, desc="train"
    )
    t0, tokens_timed = time.perf_counter(), 0

    def checkpoint(step: int) -> None:
        tensors, groups = optimizer_tensors(opt)
        tensors |= {f"sae.{k}": v for k, v in sae.state_dict().items()}
        tensors["dead.tokens_since_fired"] = tracker.tokens_since_fired
        if rotation is not None:
            tensors |= rotation.tensors()
        if average is not None:
            tensors |= average.tensors()
        scalars = {
            "sae": sae.cfg.to_json(),
            "adam_groups": groups,
            "controller": controller.state() if controller else None,
            "train_config": asdict(requested) | {"overwrite": False, "progress": False},
            "resolved_defaults": cfg.resolved_defaults(),
            "data_fingerprint": data_id,
        }
        save_checkpoint(out, TrainingState(step, scalars, tensors))

    with contextlib.ExitStack() as stack:
        stop_requested = stack.enter_context(_stop_requests())
        stack.callback(logger.close)
        stack.callback(bar.close)
        # The loop below drops each step's gradients before the next backward, so the steps
        # may write theirs into the memory of the last step's (no page faults); freed after.
        sae.step_memory = StepMemory()
        stack.callback(setattr, sae, "step_memory", None)
        for step, x in zip(range(start, total_steps), batches, strict=False):
            lr = learning_rate(
                step, total_steps, cfg.lr_value(), cfg.decay_fraction, cfg.lr_warmup_value()
            )
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_multiple"]
            if rotation is not None:
                x = rotation.apply_(x)  # the sources' batches are the trainer's own
            coefficient = controller.coefficient if controller else cfg.coefficient_value()
            if cfg.arch in ("relu", "jumprelu"):
                coefficient *= coefficient_warmup(step, total_steps, cfg.warmup_fraction)
            result = sae.training_step(x, coefficient, dead_mask=tracker.dead_mask)
            _check_diverged(result, cfg.divergence_fvu, step, out)
            result.loss.backward()
            # The gradients are dropped in there, not before the next backward: the next
            # forward (which for relu forms the gradients itself) runs without them alive.
            apply_gradients(sae, opt, result, cfg.grad_clip, reset_idle)
            sae.after_optimizer_step()
            if average is not None:
                average.update(sae)
            tracker.update(result.fired, x.shape[0])
            if controller is not None:
                controller.update(float(result.l0))
            tokens_timed += x.shape[0]
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
                rate = tokens_timed / (time.perf_counter() - t0)
                metrics = {
                    "step": step + 1,
                    "tokens": (step + 1) * cfg.batch_size,
                    "loss": float(result.loss.detach()),
                    "mse": float(result.mse),
                    "fvu": float(result.fvu),
                    "l0": float(result.l0),
                    "sparsity": float(result.sparsity),
                    "coefficient": coefficient,
                    "lr": opt.param_groups[0]["lr"],
                    "dead_fraction": tracker.dead_fraction(),
                    "tokens_per_s": round(rate, 1),
                }
                logger.log(metrics)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3g}",
                    fvu=f"{metrics['fvu']:.3f}",
                    l0=f"{metrics['l0']:.1f}",
                    dead=f"{metrics['dead_fraction']:.1%}",
                    tok_s=f"{rate:,.0f}",
                )
            # Gone before the next batch is read, rather than held while it is: one batch
            # alive at a time (9 MiB at batch 4096 x 576).
            del x, result
            if step + 1 == total_steps:
                if cfg.refit_decoder:  # a kill during the refit's pass resumes at the refit
                    checkpoint(step + 1)
                break
            stop = stop_requested()
            if stop or (step + 1) % cfg.checkpoint_every == 0:
                checkpoint(step + 1)
            if stop:
                raise TrainingInterrupted(
                    f"{stop} after step {step + 1} of {total_steps}: checkpoint written to {out}"
                )

    sae.cfg.training = {
        "tokens": total_steps * cfg.batch_size,
        "steps": total_steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr_value(),
        "decoder_lr_multiple": decoder_multiple,
        "decoder_init_power": cfg.decoder_init_power_value(),
        "adam_betas": list(betas),
        "adam_basis": "standard" if rotation is None else "eigen",
        "idle_momentum": cfg.idle_momentum_value(),
        "b_enc_init_share": cfg.b_enc_init_share_value(),
        "lr_warmup_fraction": cfg.lr_warmup_value(),
        "lr_decay_fraction": cfg.decay_fraction,
        "weight_average": cfg.weight_average,
        "refit_decoder": cfg.refit_decoder,
        "coefficient": controller.coefficient if controller else cfg.coefficient_value(),
        "median_norm": median,
        "max_norm": max_norm,
        "dead_window": cfg.dead_window,
        "dead_fraction": tracker.dead_fraction(),
        "data": source.description,
        "seed": cfg.seed,
    }
    if average is not None:
        average.copy_to(sae)
        sae.after_optimizer_step()  # the averaged decoder rows back to unit norm
    if rotation is not None:
        rotate_sae(sae, rotation.matrix().T)  # back to the activations' own coordinates
    sae.after_training(_init_sample(source, max_norm))
    if cfg.refit_decoder:
        # The tokens trained on, in their order, in raw coordinates (the SAE is rotated back).
        trained = itertools.islice(_batches(source, cfg, max_norm), total_steps)
        if cfg.progress:
            print(f"refitting the decoder over {total_steps} batches", file=sys.stderr)
        # Adam's state (twice the weights) and the average's copy are not needed any more:
        # the refit's memory is.
        del opt, reset_idle, average
        refit = refit_decoder(sae, trained, cfg.refit_decoder)
        sae.cfg.training["refit"] = {
            "iterations": refit.iterations,
            "train_fvu_before": refit.fvu_before,
            "train_loss_after": refit.loss_after,
        }
        if cfg.progress:
            print(
                f"decoder refitted in {refit.iterations} iterations: training FVU "
                f"{refit.fvu_before:.4f} -> at most {refit.loss_after:.4f}",
                file=sys.stderr,
            )
    sae.save(out)
    # Finished: the folder now holds a trained SAE, not a run to resume.
    (out / "checkpoint.json").unlink(missing_ok=True)
    for leftover in out.glob("checkpoint-*.safetensors"):
        leftover.unlink()
    return sae.eval()


def _check_sparsity(cfg: TrainConfig, n_features: int, tokens: int) -> None:
    """--k and --target-l0 within the dictionary's size, and --refit-decoder's codes within
    the memory available (before any work)."""
    if cfg.arch in ("topk", "batchtopk") and cfg.k_value() > n_features:
        which = f"--k {cfg.k}" if cfg.k else f"the default --k {cfg.k_value()}"
        raise ValueError(f"{which} is larger than the number of features {n_features}")
    if cfg.target_l0 > n_features:
        raise ValueError(
            f"--target-l0 {cfg.target_l0:g} is larger than the number of features {n_features}"
        )
    if cfg.refit_decoder:
        # topk and batchtopk keep about k codes a token; relu and jumprelu about their
        # target, if they have one (without one, their L0 is not known before training).
        codes = cfg.k_value() if cfg.arch in ("topk", "batchtopk") else cfg.target_l0
        check_refit_memory(tokens, codes)


LOCATION_SETTINGS = ("acts", "out")
"""TrainConfig fields that say where things are, not what the run computes."""


def _changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """The settings in which a checkpoint's run differs from `cfg`, as 'name: saved -> now'.
    A setting the checkpoint lacks (one added since it was written) matches only at its
    default: then the run it belongs to behaves the same under this version."""
    current = asdict(cfg) | {"overwrite": False, "progress": False}
    # Where the data and the run live is recorded, not compared: a store reached by another
    # path, moved or copied is the same data, which `data_fingerprint` checks by content.
    saved = {k: v for k, v in saved.items() if k not in LOCATION_SETTINGS}
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


def _decay(settings: dict) -> float:
    """The decay fraction a run's requested settings resolve to."""
    return replace(
        TrainConfig(), **{name: settings[name] for name in ("decay_fraction", "weight_average")}
    ).decay_value()


def _check_diverged(result: TrainStep, limit: float, step: int, out: Path) -> None:
    """TrainingDivergedError if the step's loss is NaN/Inf or its FVU is over `limit` (0: no
    FVU limit); one host sync for both."""
    finite = torch.isfinite(result.loss)
    ok = finite & (result.fvu <= limit) if limit > 0 else finite
    if bool(ok):
        return
    what = (
        f"loss became {result.loss.item()}"
        if not bool(finite)
        else f"batch FVU became {float(result.fvu):.4g} (over --divergence-fvu {limit:g})"
    )
    kept = (
        f"the last good checkpoint is kept in {out}"
        if (out / POINTER).exists()
        else "no checkpoint was written yet"
    )
    raise TrainingDivergedError(
        f"{what} at step {step}: the run diverged; {kept} (lower --lr, or check the activations)"
    )


def read_log(out: str | Path) -> list[dict]:
    """The metrics a run in `out` logged, one dict per logged step (loggers.read_metrics)."""
    return read_metrics(Path(out) / "train_log.jsonl")
