"""The training loop: batches -> SAE steps with the recipe's schedules, logging, checkpoints.

A run killed at any point and started again with the same command continues from its last
checkpoint and ends bit-identical to an uninterrupted run: the data order is a pure function of
the seed and the step, and the checkpoint holds every piece of mutable state. `run` opens the
source, `_train` starts or resumes (start.py), builds the optimizer, runs `_loop` and
`_finish`es: the final weights, the optional decoder refit, the saved SAE.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from monoscope.distributed import World, all_reduce_sum_, joined, launched_world, process_device
from monoscope.plan import check_fits, check_gather_fits
from monoscope.sae import SparseAutoencoder, TrainStep
from monoscope.sae.registry import trained_class
from monoscope.sae.sharded import Trainable, check_shardable_run
from monoscope.sae.step_memory import StepMemory
from monoscope.sae.training import DEFAULT_K, SPARSITY_PENALTY
from monoscope.train.average import WeightAverage
from monoscope.train.basis import rotate_sae
from monoscope.train.checkpoint import POINTER, Checkpointer, RunParts, load_checkpoint
from monoscope.train.config import TrainConfig
from monoscope.train.dead import DeadLatentTracker
from monoscope.train.idle import IdleMomentumReset
from monoscope.train.loggers import MetricLogger, read_metrics, require_backend
from monoscope.train.outdir import prepare_out, removed_if_failed_early
from monoscope.train.parallel import (
    agreed_stop,
    broadcast_parameters,
    broadcast_tensors,
    check_data_parallel,
    run_on_main,
    share_batches,
    slice_of,
    sum_gradients,
    summed_step,
)
from monoscope.train.prefetch import prefetched
from monoscope.train.refit import check_memory as check_refit_memory
from monoscope.train.refit import refit_decoder
from monoscope.train.schedules import coefficient_warmup, learning_rate
from monoscope.train.sources import ModelSource, Source, open_source
from monoscope.train.start import (
    Start,
    init_sample,
    new_start,
    recorded_settings,
    resumed_start,
)
from monoscope.train.step import apply_gradients
from monoscope.train.target_l0 import L0Controller


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


def _batches(source: Source, cfg: TrainConfig, max_norm: float | None) -> Iterator[torch.Tensor]:
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


def train(acts: str | Path, out: str | Path, **options: Any) -> SparseAutoencoder:
    """Train an SAE on `acts` (an activation store, or an .npy / .safetensors array [n, d])
    into folder `out`: `run(TrainConfig(acts=..., out=..., **options))`, the options being
    TrainConfig's fields (arch, features, k, tokens, lr, ...; unset: the architecture's
    defaults). Resumes from a checkpoint in `out` as the CLI does."""
    return run(TrainConfig(acts=str(acts), out=str(out), **options))


def run(cfg: TrainConfig) -> SparseAutoencoder:
    """Train an SAE as `cfg` says; resume from the checkpoint at cfg.out if there is one.
    Started by torchrun, each process trains on its slice of every batch (parallel.py), or
    with cfg.shard_features on every batch with its slice of the dictionary (sae/sharded.py):
    then process 0 returns the whole SAE and the others their slices, as TopK SAEs of F/N
    features."""
    require_backend(cfg.logger)  # a missing optional package fails before anything is done
    world = launched_world()
    _check_world(cfg, world)
    device = process_device(cfg.device, world)
    with joined(device):
        return _run(cfg, world, device)


def _check_world(cfg: TrainConfig, world: World) -> None:
    """--nproc must match the processes torchrun started (the CLI starts them for --nproc)."""
    if cfg.nproc > 1 and not world.distributed:
        raise ValueError(
            f"--nproc {cfg.nproc}: start the processes with `monoscope train --nproc "
            f"{cfg.nproc} ...` or `torchrun --nproc-per-node {cfg.nproc} -m monoscope train ...`"
        )
    if world.distributed and cfg.nproc not in (1, world.size):
        raise ValueError(f"--nproc {cfg.nproc}, but torchrun started {world.size} processes")
    if not cfg.shard_features:
        check_data_parallel(world, cfg.arch, cfg.batch_size, bool(cfg.stream_model))
    elif cfg.stream_model:
        raise ValueError("--shard-features trains from a store (--acts), not --stream-model")


def _run(cfg: TrainConfig, world: World, device: torch.device) -> SparseAutoencoder:
    """`run` in this process, once its world is joined."""
    if cfg.stream_model:
        # The shuffle buffer need not hold more than the run trains on: a short run would
        # otherwise harvest the whole buffer (131k tokens) before its first step.
        buffer = min(ModelSource.BUFFER_TOKENS, max(cfg.tokens, cfg.batch_size))
        source: Source = ModelSource(
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
    _check_fits(cfg, source.d, device, world)
    out = Path(cfg.out)
    # Process 0 owns the folder: it prepares it (the others wait) and writes every file.
    with removed_if_failed_early(out) if world.is_main else contextlib.nullcontext():
        run_on_main(world, lambda: prepare_out(out, cfg.overwrite))
        return _train(cfg, source, out, total_steps, device, world)


def _train(
    requested: TrainConfig,
    source: Source,
    out: Path,
    total_steps: int,
    device: torch.device,
    world: World,
) -> SparseAutoencoder:
    """The run itself, in the prepared folder `out`: new or resumed, trained, saved."""
    median = source.median_norm()
    limit = requested.outlier_multiple
    max_norm = limit * median if limit > 0 else None
    state = load_checkpoint(out, world if requested.shard_features else None, device)
    data_id = source.fingerprint()
    # Each process of a sharded run starts its own slice; a resumed one's slices are read from
    # each process's checkpoint file.
    if state is None:
        start = new_start(requested, source, max_norm, world, device)
    else:
        start = resumed_start(state, requested, data_id, source.description, out, world)
    cfg = start.cfg
    parts = _parts(start, total_steps, device, world)
    record = {
        "train_config": recorded_settings(requested),
        "resolved_defaults": cfg.resolved_defaults(),
        "data_fingerprint": data_id,
    }
    sharded = cfg.shard_features
    writes = world.is_main or sharded
    checkpointer = Checkpointer(out, parts, record, writes, world if sharded else None)
    first = 0
    if state is not None:
        first = checkpointer.restore(state)
        if cfg.progress:
            print(f"resuming {out} at step {first} of {total_steps}", file=sys.stderr)
    _loop(parts, cfg, source, max_norm, range(first, total_steps), checkpointer, world)
    summary = _summary(parts, cfg, source, total_steps, median, max_norm, world)
    parts.sae.cfg.training = summary | {"processes": world.size}
    _final_weights(parts)
    trained = parts.sae
    # Adam's state (twice the weights) and the average's copy are not needed any more: the
    # gathered SAE's memory and the refit's are.
    del parts, checkpointer, start
    sae = _whole(trained)
    del trained  # a sharded run's slice: in process 0, copied into the gathered SAE
    if not world.is_main:  # process 0 refits and saves the SAE (it alone holds all of it)
        return sae.eval()
    return _finish(sae, cfg, source, max_norm, total_steps)


def _whole(trained: Trainable) -> SparseAutoencoder:
    """The trained SAE as one process's SAE: a sharded one gathered in process 0 (in the
    others, their own slice)."""
    if isinstance(trained, SparseAutoencoder):
        trained.batch_shares = type(trained).batch_shares  # one process's batches again
        return trained
    whole = trained.gathered()
    if whole is not None:
        return whole
    trained.local.cfg.training = trained.cfg.training
    return trained.local


def _parts(start: Start, total_steps: int, device: torch.device, world: World) -> RunParts:
    """The SAE on `device` (with --shard-features, this process's slice of it), the optimizer
    and the run's other state, as the new run starts them (in every process alike)."""
    cfg = start.cfg
    rotation = None if start.rotation is None else start.rotation.to(device)
    rotated = [] if rotation is None else list(rotation.tensors().values())
    sae = start.sae.to(device)
    if isinstance(sae, SparseAutoencoder):
        broadcast_parameters(sae, rotated, world)
        share_batches(sae, world)
    else:
        broadcast_tensors([sae.b_dec.data, *rotated], world)  # what every process shares
    # start.cfg is resolved: the architecture's defaults are written out.
    assert cfg.lr is not None and cfg.adam_beta1 is not None and cfg.coefficient is not None
    groups: list[dict[str, Any]] = [
        {"params": [p for p in sae.parameters() if p is not sae.W_dec], "lr_multiple": 1.0},
        {"params": [sae.W_dec], "lr_multiple": cfg.decoder_lr_multiple},
    ]
    # fused: one kernel over all parameters, several times faster than one per parameter.
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.adam_beta1, 0.999), fused=True)
    controller = L0Controller(cfg.target_l0, cfg.coefficient) if cfg.target_l0 else None
    average = (
        WeightAverage(sae, max(1.0, cfg.weight_average * total_steps))
        if cfg.weight_average
        else None
    )
    features = sae.cfg.n_features // (world.size if cfg.shard_features else 1)
    tracker = DeadLatentTracker(features, cfg.dead_window, device)
    return RunParts(sae, opt, tracker, controller, average, rotation)


def _loop(
    parts: RunParts,
    cfg: TrainConfig,
    source: Source,
    max_norm: float | None,
    steps: range,
    checkpointer: Checkpointer,
    world: World,
) -> None:
    """Train over `steps`, logging and checkpointing; stop (after a checkpoint) on a signal.
    Process 0 logs and shows the progress; every process takes every step."""
    out, total_steps = checkpointer.folder, steps.stop
    logger = None
    if world.is_main:
        logger = MetricLogger(
            out / "train_log.jsonl", cfg.logger, resume_step=steps.start, config=asdict(cfg)
        )
    device = parts.sae.W_dec.device
    sliced = world if not cfg.shard_features else World()  # sharded: every process, all rows
    batches = _device_batches(source, cfg, max_norm, steps.start, device, sliced)
    bar = tqdm(
        total=total_steps,
        initial=steps.start,
        unit="step",
        disable=not (cfg.progress and world.is_main),
        desc="train",
    )
    reset_idle = IdleMomentumReset(parts.sae, parts.opt) if cfg.idle_momentum == "reset" else None
    rate = _Rate()
    with contextlib.ExitStack() as stack:
        stop_requested = stack.enter_context(_stop_requests())
        if logger is not None:
            stack.callback(logger.close)
        stack.callback(bar.close)
        # The loop below drops each step's gradients before the next backward, so the steps
        # may write theirs into the memory of the last step's (no page faults); freed after.
        parts.sae.step_memory = StepMemory()
        stack.callback(setattr, parts.sae, "step_memory", None)
        stack.callback(batches.close)  # stops a prefetching thread
        for step, x in zip(steps, batches, strict=False):
            result, coefficient = _step(parts, cfg, reset_idle, x, step, total_steps, out, world)
            rate.count(cfg.batch_size)
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
                metrics = _metrics(parts, cfg, result, step, coefficient, rate.per_second(), world)
                if logger is not None:
                    logger.log(metrics)
                    bar.set_postfix(_postfix(metrics))
            # Gone before the next batch is read, rather than held while it is: one batch
            # alive at a time (9 MiB at batch 4096 x 576).
            del x, result
            if step + 1 == total_steps:
                if cfg.refit_decoder:  # a kill during the refit's pass resumes at the refit
                    checkpointer.save(step + 1)
                break
            stop = agreed_stop(stop_requested(), world, device)
            if stop or (step + 1) % cfg.checkpoint_every == 0:
                checkpointer.save(step + 1)
            if stop:
                raise TrainingInterrupted(
                    f"{stop} after step {step + 1} of {total_steps}: checkpoint written to {out}"
                )


def _step(
    parts: RunParts,
    cfg: TrainConfig,
    reset_idle: IdleMomentumReset | None,
    x: torch.Tensor,
    step: int,
    total_steps: int,
    out: Path,
    world: World,
) -> tuple[TrainStep, float]:
    """One optimizer step on batch x [batch_size / processes, d_in] (sharded: [batch_size,
    d_in]; rotated in place for the eigenbasis); the step's outcome over the whole batch and
    the sparsity coefficient it used."""
    sae, opt = parts.sae, parts.opt
    # start.cfg is resolved: the architecture's defaults are written out.
    assert cfg.lr is not None and cfg.decay_fraction is not None
    assert cfg.lr_warmup_fraction is not None and cfg.coefficient is not None
    lr = learning_rate(step, total_steps, cfg.lr, cfg.decay_fraction, cfg.lr_warmup_fraction)
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_multiple"]
    if parts.rotation is not None:
        x = parts.rotation.apply_(x)  # the sources' batches are the trainer's own
    coefficient = parts.controller.coefficient if parts.controller else cfg.coefficient
    if sae.sparsity == SPARSITY_PENALTY:  # a penalty is warmed up; AuxK's weight is not
        coefficient *= coefficient_warmup(step, total_steps, cfg.warmup_fraction)
    share = sae.training_step(x, coefficient, dead_mask=parts.tracker.dead_mask)
    # The whole batch's figures: a sharded step's are already (its `fired`, its slice's).
    sharded = cfg.shard_features
    result = share if sharded else summed_step(share, world)
    _check_diverged(result, cfg.divergence_fvu, step, out)
    share.loss.backward()
    # The gradients are dropped in there, not before the next backward: the next forward
    # (which for relu forms the gradients itself) runs without them alive.
    summed = sum_gradients if world.distributed and not sharded else None
    apply_gradients(sae, opt, share, cfg.grad_clip, reset_idle, sum_gradients=summed)
    sae.after_optimizer_step()
    if parts.average is not None:
        parts.average.update(sae)
    parts.tracker.update(result.fired, cfg.batch_size)
    if parts.controller is not None:
        parts.controller.update(float(result.l0))
    return result, coefficient


def _device_batches(
    source: Source,
    cfg: TrainConfig,
    max_norm: float | None,
    first_step: int,
    device: torch.device,
    world: World,
) -> Generator[torch.Tensor, None, None]:
    """This process's slices of the batches from step `first_step` on, on `device`."""
    whole = itertools.islice(_batches(source, cfg, max_norm), first_step, None)
    mine = (slice_of(batch, world) for batch in whole)
    return prefetched(mine, device, _ahead(cfg.prefetch, device))


def _ahead(prefetch: int | None, device: torch.device) -> int:
    """Batches to read ahead: as asked, else 2 on an accelerator and none on the CPU."""
    if prefetch is not None:
        return prefetch
    return 0 if device.type == "cpu" else 2


class _Rate:
    """Tokens a second since the loop began."""

    def __init__(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def count(self, tokens: int) -> None:
        self.tokens += tokens

    def per_second(self) -> float:
        return self.tokens / (time.perf_counter() - self.start)


def _dead_fraction(parts: RunParts, world: World) -> float:
    """The fraction of the whole dictionary's latents that are dead (a sharded run's slices'
    counts summed: every process must call this)."""
    if isinstance(parts.sae, SparseAutoencoder):  # the whole dictionary's counters
        return parts.tracker.dead_fraction()
    dead = parts.tracker.dead_mask.sum().view(1).to(torch.float64)
    return float(all_reduce_sum_(dead)) / parts.sae.cfg.n_features


def _metrics(
    parts: RunParts,
    cfg: TrainConfig,
    result: TrainStep,
    step: int,
    coefficient: float,
    rate: float,
    world: World,
) -> dict[str, Any]:
    """The line of train_log.jsonl after `step` (counting from 0); every process must call
    this (a sharded run's dead latents are counted over its processes)."""
    return {
        "step": step + 1,
        "tokens": (step + 1) * cfg.batch_size,
        "loss": float(result.loss.detach()),
        "mse": float(result.mse),
        "fvu": float(result.fvu),
        "l0": float(result.l0),
        "sparsity": float(result.sparsity),
        "coefficient": coefficient,
        "lr": parts.opt.param_groups[0]["lr"],
        "dead_fraction": _dead_fraction(parts, world),
        "tokens_per_s": round(rate, 1),
    }


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    """The progress bar's figures."""
    return {
        "loss": f"{metrics['loss']:.3g}",
        "fvu": f"{metrics['fvu']:.3f}",
        "l0": f"{metrics['l0']:.1f}",
        "dead": f"{metrics['dead_fraction']:.1%}",
        "tok_s": f"{metrics['tokens_per_s']:,.0f}",
    }


def _summary(
    parts: RunParts,
    cfg: TrainConfig,
    source: Source,
    total_steps: int,
    median: float,
    max_norm: float | None,
    world: World,
) -> dict[str, Any]:
    """What the saved SAE's config records of its training (`SAEConfig.training`; every
    process must call this)."""
    return {
        "tokens": total_steps * cfg.batch_size,
        "steps": total_steps,
        "batch_size": cfg.batch_size,
        "recipe": cfg.recipe,
        "lr": cfg.lr,
        "decoder_lr_multiple": cfg.decoder_lr_multiple,
        "decoder_init_power": cfg.decoder_init_power,
        "adam_betas": [cfg.adam_beta1, 0.999],
        "adam_basis": "standard" if parts.rotation is None else "eigen",
        "idle_momentum": cfg.idle_momentum,
        "b_enc_init_share": cfg.b_enc_init_share,
        "lr_warmup_fraction": cfg.lr_warmup_fraction,
        "lr_decay_fraction": cfg.decay_fraction,
        "weight_average": cfg.weight_average,
        "refit_decoder": cfg.refit_decoder,
        "coefficient": parts.controller.coefficient if parts.controller else cfg.coefficient,
        "median_norm": median,
        "max_norm": max_norm,
        "dead_window": cfg.dead_window,
        "dead_fraction": _dead_fraction(parts, world),
        "shard_features": cfg.shard_features,
        "data": source.description,
        "seed": cfg.seed,
    }


def _final_weights(parts: RunParts) -> None:
    """The weights to save: the average if there is one, in the activations' coordinates."""
    if parts.average is not None:
        parts.average.copy_to(parts.sae)
        parts.sae.after_optimizer_step()  # the averaged decoder rows back to unit norm
    if parts.rotation is not None:
        rotate_sae(parts.sae, parts.rotation.matrix().T)  # back to the activations' own


def _finish(
    sae: SparseAutoencoder,
    cfg: TrainConfig,
    source: Source,
    max_norm: float | None,
    total_steps: int,
) -> SparseAutoencoder:
    """Set what inference needs, refit the decoder if asked, save the SAE in place of the
    checkpoint."""
    out = Path(cfg.out)
    sae.after_training(init_sample(source, max_norm))
    if cfg.refit_decoder:
        # The tokens trained on, in their order, in raw coordinates (the SAE is rotated back).
        trained = itertools.islice(_batches(source, cfg, max_norm), total_steps)
        if cfg.progress:
            print(f"refitting the decoder over {total_steps} batches", file=sys.stderr)
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
    (out / POINTER).unlink(missing_ok=True)
    for leftover in out.glob("checkpoint-*.safetensors"):
        leftover.unlink()
    return sae.eval()


def _check_sparsity(requested: TrainConfig, n_features: int, tokens: int) -> None:
    """--k and --target-l0 within the dictionary's size, and --refit-decoder's codes within
    the memory available (before any work)."""
    cfg = requested.resolved()
    if cfg.k is not None and cfg.k > n_features:
        which = f"--k {cfg.k}" if requested.k is not None else f"the default --k {cfg.k}"
        raise ValueError(f"{which} is larger than the number of features {n_features}")
    if cfg.target_l0 > n_features:
        raise ValueError(
            f"--target-l0 {cfg.target_l0:g} is larger than the number of features {n_features}"
        )
    if cfg.refit_decoder:
        # k-sparse architectures keep about k codes a token; penalised ones about their
        # target, if they have one (without one, their L0 is not known before training).
        check_refit_memory(tokens, cfg.k if cfg.k is not None else cfg.target_l0)


def _check_fits(cfg: TrainConfig, d_in: int, device: torch.device, world: World) -> None:
    """Refuse, before any work, a dictionary that cannot be split by features as asked, whose
    step cannot fit the device's memory (or the RAM the processes share), or a sharded one
    process 0 cannot hold whole to save it, saying what to change (monoscope.plan)."""
    n_features = cfg.n_features(d_in)
    k = cfg.resolved(n_features).k or DEFAULT_K
    if cfg.shard_features:
        check_shardable_run(cfg.arch, n_features, k, world.size, cfg.compute_dtype)
    check_fits(
        n_features,
        d_in,
        cfg.batch_size,
        device,
        world.size,
        k=k,
        arch=cfg.arch,
        compute_dtype=cfg.compute_dtype,
        shard_features=cfg.shard_features,
        can_shard=trained_class(cfg.arch).feature_shardable,
    )
    if cfg.shard_features and world.is_main:
        check_gather_fits(n_features, d_in)


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


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The metrics a run in `out` logged, one dict per logged step (loggers.read_metrics)."""
    return read_metrics(Path(out) / "train_log.jsonl")
