"""Feature-sharded TopK SAEs (issue 24, part 3): N gloo processes, each holding a slice of the
dictionary, give the unsharded TopKSAE's codes, reconstruction, loss and gradients, the same
weights after Adam steps, and save one ordinary SAE folder.

The processes are this file run as a script (`python test_sharded_sae.py OUT RANK SIZE`): each
joins a gloo group through a rendezvous file (no port to pick), checks itself against the
unsharded SAE built from the same weights, and writes its largest differences to OUT; the test
then reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monoscope.distributed import World
from monoscope.sae import BatchTopKSAE, SAEConfig, TopKSAE, base, build_sae, load_sae
from monoscope.sae.base import random_direction_rows, random_directions
from monoscope.sae.sharded import ShardedTopKSAE, check_shardable, shard_of
from monoscope.sae.step_memory import StepMemory
from monoscope.train import TrainConfig
from monoscope.train.start import input_scale, start_from_sample
from monoscope.train.step import apply_gradients

TOLERANCE = 1e-5
"""Largest difference allowed from the unsharded SAE (values of order 1: float32 sums taken in
another order differ by ~1e-7)."""
D, FEATURES, K, BATCH = 16, 48, 4, 64  # 48 features split over 1, 2 and 3 processes
CLIP = 0.05  # below the steps' gradient norms: clipping scales every step
STEPS = 3


def _reference() -> tuple[TopKSAE, torch.Tensor]:
    """An unsharded TopK SAE with an untied encoder and nonzero biases, and a batch [64, 16]."""
    generator = torch.Generator().manual_seed(0)
    sae = TopKSAE(SAEConfig("topk", D, FEATURES, k=K, input_scale=1.3))
    sae.reset_parameters(generator)
    with torch.no_grad():
        sae.W_enc.mul_(1 + torch.rand(FEATURES, generator=generator))
        sae.b_enc.normal_(0, 0.1, generator=generator)
        sae.b_dec.normal_(0, 0.2, generator=generator)
    return sae, torch.randn(BATCH, D, generator=generator)


def _dead_masks() -> dict[str, torch.Tensor]:
    """AuxK cases: about half the latents dead (k_aux = d_in / 2); five dead latents, all in
    the first third (k_aux = 5: the other slices have no dead latent)."""
    half = torch.rand(FEATURES, generator=torch.Generator().manual_seed(1)) < 0.5
    few = torch.zeros(FEATURES, dtype=torch.bool)
    few[[0, 3, 7, 9, 14]] = True
    return {"half": half, "few": few}


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def _span(sharded: ShardedTopKSAE) -> slice:
    return slice(sharded.offset, sharded.offset + sharded.width)


def _slice_of(name: str, tensor: torch.Tensor, sharded: ShardedTopKSAE) -> torch.Tensor:
    """The part of an unsharded parameter (or gradient) `name` that `sharded` holds."""
    if name == "b_dec":  # replicated
        return tensor
    return tensor[:, _span(sharded)] if name == "W_enc" else tensor[_span(sharded)]


def forward_differences(world: World) -> dict[str, float]:
    """Codes, reconstruction and loss of the sharded SAE against the unsharded one."""
    sae, x = _reference()
    sharded = shard_of(sae, world)
    pattern, values = sharded.sparse_codes(x)
    codes = pattern.dense(values)
    with torch.no_grad():
        whole = sae.encode(x)
        loss = sae.training_step(x).loss
        sharded_loss = sharded.training_step(x).loss
        return {
            "codes": _max_difference(codes, whole[:, _span(sharded)]),
            "reconstruction": _max_difference(sharded(x), sae(x)),
            "loss": _max_difference(sharded_loss, loss),
        }


def gradient_differences(world: World, dead: torch.Tensor | None) -> dict[str, float]:
    """Every parameter's gradient (this process's slice) against the unsharded gradient's
    slice, the whole gradient norm, the loss and the AuxK term; `aux` reports the AuxK term
    (nonzero: AuxK took part)."""
    sae, x = _reference()
    sharded = shard_of(sae, world)
    step = sae.training_step(x, 1 / 32, dead)
    step.loss.backward()
    mine = None if dead is None else dead[_span(sharded)]
    sharded_step = sharded.training_step(x, 1 / 32, mine)
    sharded_step.loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in sae.parameters()])
    differences = {
        name: _max_difference(getattr(sharded, name).grad, _slice_of(name, p.grad, sharded))
        for name, p in sae.named_parameters()
    }
    differences["norm"] = _max_difference(sharded.gradient_norm(), norm)
    differences["loss"] = _max_difference(sharded_step.loss, step.loss)
    differences["auxk"] = _max_difference(sharded_step.sparsity, step.sparsity)
    differences["l0"] = _max_difference(sharded_step.l0, step.l0)
    differences["fired"] = float(not torch.equal(sharded_step.fired, step.fired[_span(sharded)]))
    return {**differences, "aux": float(step.sparsity)}


def adam_differences(world: World, out: Path) -> dict[str, float]:
    """Weights after Adam steps as the trainer takes them (decoder constraint, clipping by the
    global norm, deferred W_enc gradient) against the unsharded SAE's; the sharded SAE then
    saved to out/sae (loaded and compared by process 0)."""
    sae, x = _reference()
    sharded = shard_of(sae, world)
    dead = _dead_masks()["half"]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, fused=True) for m in (sae, sharded)]
    sae.step_memory, sharded.step_memory = StepMemory(), StepMemory()
    norms = []
    for step in range(STEPS):
        batch = x.roll(step * 7, 0) * (1 + 0.1 * step)
        result = sae.training_step(batch, 1 / 32, dead)
        result.loss.backward()
        norms.append(max(g.norm_bound() for _, g in result.deferred))
        apply_gradients(sae, optimizers[0], result, CLIP)
        sae.after_optimizer_step()
        mine = sharded.training_step(batch, 1 / 32, dead[_span(sharded)])
        mine.loss.backward()
        apply_gradients(sharded, optimizers[1], mine, CLIP)
        sharded.after_optimizer_step()
    differences = {
        f"trained {name}": _max_difference(getattr(sharded, name), _slice_of(name, p, sharded))
        for name, p in sae.named_parameters()
    }
    sharded.save(out / "sae")
    if world.is_main:
        loaded = load_sae(out / "sae")
        assert isinstance(loaded, TopKSAE) and loaded.cfg == sae.cfg
        for name, p in sae.named_parameters():
            differences[f"saved {name}"] = _max_difference(getattr(loaded, name), p)
    differences["moved"] = _max_difference(sae.W_enc, _reference()[0].W_enc)
    # Replicated: alike to the bit in every process (the test compares them).
    differences["b_dec sum"] = float(sharded.b_dec.detach().double().sum())
    differences["smallest W_enc bound"] = float(min(norms))
    return differences


def start_differences(world: World) -> dict[str, float]:
    """This process's slice as it starts itself (`init_slice`, then the trainer's start from a
    sample: data-shaped decoder, least-squares scales, b_enc below the firing cuts) against
    the slice of the whole SAE started so; `cut share` reports the share (nonzero: the cuts
    took part)."""
    config = TrainConfig(arch="topk", k=K, seed=5).resolved(FEATURES)
    sample = torch.randn(512, D, generator=torch.Generator().manual_seed(2)) * 3 + 1
    cfg = SAEConfig("topk", D, FEATURES, k=K, input_scale=input_scale(sample))
    whole = build_sae(cfg, seed=5)
    start_from_sample(whole, config, sample)
    sharded = ShardedTopKSAE(cfg, world)
    sharded.init_slice(5)
    start_from_sample(sharded, config, sample)
    differences = {
        f"started {name}": _max_difference(getattr(sharded, name), _slice_of(name, p, sharded))
        for name, p in whole.named_parameters()
    }
    assert config.b_enc_init_share is not None
    return {**differences, "cut share": config.b_enc_init_share}


def all_differences(world: World, out: Path) -> dict[str, float]:
    """Every check of this file, in one process of `world`."""
    found = {f"forward {k}": v for k, v in forward_differences(world).items()}
    found |= start_differences(world)
    for case, dead in [("no AuxK", None), *_dead_masks().items()]:
        for name, value in gradient_differences(world, dead).items():
            found[f"{case}: {name}"] = value
    return {**found, **adam_differences(world, out)}


def _check(found: dict[str, float], processes: int) -> None:
    """The differences within TOLERANCE; the checks exercised what they test."""
    informative = {"no AuxK: aux", "half: aux", "few: aux", "moved", "smallest W_enc bound"}
    informative |= {"b_dec sum", "cut share"}
    assert found["no AuxK: aux"] == 0 and found["half: aux"] > 0 and found["few: aux"] > 0
    assert found["cut share"] > 0
    assert found["moved"] > 1e-3, "Adam should have moved the weights"
    assert found["smallest W_enc bound"] > 0
    wrong = {k: v for k, v in found.items() if k not in informative and not v <= TOLERANCE}
    assert not wrong, f"{processes} processes differ from the unsharded SAE: {wrong}"


# -- one process -------------------------------------------------------------------------------
def test_a_world_of_one_is_the_unsharded_sae(tmp_path):
    found = all_differences(World(), tmp_path)
    assert "saved W_enc" in found
    _check(found, 1)


def test_clipping_uses_the_whole_gradient_norm():
    sae, x = _reference()
    sharded = shard_of(sae, World())
    sharded.training_step(x).loss.backward()
    norm = sharded.gradient_norm()
    assert float(sharded.clip_gradients(float(norm) / 2)) == pytest.approx(float(norm))
    assert float(sharded.gradient_norm()) == pytest.approx(float(norm) / 2, rel=1e-5)


def test_what_cannot_be_sharded_is_refused():
    cfg = SAEConfig("topk", D, FEATURES, k=K)
    with pytest.raises(ValueError, match="48 features do not split into 5 equal slices"):
        check_shardable(cfg, 5)
    with pytest.raises(ValueError, match="--k 4 is more than a slice of 3 features"):
        check_shardable(cfg, 16)
    with pytest.raises(ValueError, match="trains topk SAEs only, not relu"):
        check_shardable(SAEConfig("relu", D, FEATURES), 2)
    with pytest.raises(ValueError, match="--compute-dtype float32"):
        check_shardable(SAEConfig("topk", D, FEATURES, k=K, compute_dtype="bfloat16"), 2)
    batchtopk = SAEConfig("batchtopk", D, FEATURES, k=K)
    with pytest.raises(ValueError, match="trains topk SAEs only, not batchtopk"):
        shard_of(BatchTopKSAE(batchtopk), World())
    check_shardable(cfg, 3)


@pytest.mark.parametrize(("n", "d"), [(100, 7), (33, 1), (4097, 5), (5, 3), (64, 16)])
def test_a_span_of_random_directions_is_those_rows_of_the_whole_draw(monkeypatch, n, d):
    monkeypatch.setattr(base, "DRAW_ROWS", 16)  # many blocks, and a short tail
    whole = random_directions(n, d, torch.Generator().manual_seed(3))
    for start, stop in [(0, n), (0, n // 2 or 1), (n // 2, n), (n // 3, 2 * n // 3 + 1)]:
        rows = random_direction_rows(n, d, torch.Generator().manual_seed(3), slice(start, stop))
        assert torch.equal(rows, whole[start:stop]), (start, stop)


# -- several processes -------------------------------------------------------------------------
@pytest.mark.parametrize("processes", [2, 3])
def test_processes_holding_slices_are_the_unsharded_sae(tmp_path, processes):
    env = os.environ | {"OMP_NUM_THREADS": "1", "MONOSCOPE_THREADS": "1"}
    env.pop("RANK", None)
    command = [sys.executable, __file__, str(tmp_path)]
    running = [
        subprocess.Popen(
            [*command, str(rank), str(processes)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(processes)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in running]
    for rank, (process, output) in enumerate(zip(running, outputs, strict=True)):
        assert process.returncode == 0, f"process {rank}:\n{output[-3000:]}"
    found = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(processes)]
    for rank, differences in enumerate(found):
        assert ("saved W_enc" in differences) == (rank == 0)
        _check(differences, processes)
    assert len({differences["b_dec sum"] for differences in found}) == 1  # replicas alike


def _worker(out: Path, rank: int, size: int) -> None:
    """One process of the multi-process test: join, check, write out/rank<rank>.json."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    rendezvous = f"file://{out / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=size)
    try:
        found = all_differences(World(rank, size, rank), out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
