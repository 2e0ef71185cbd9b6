"""`format_plan`: a plan as the text `monoscope plan` prints."""

from __future__ import annotations

from monoscope.harvest.config import HarvestConfig
from monoscope.plan.fit import HEADROOM, gather_bytes, required, usable
from monoscope.plan.memory import MemoryPlan
from monoscope.plan.runner import Estimate, Plan
from monoscope.plan.sizes import count, disk, gib
from monoscope.plan.store import INDEX_BYTES, NORM_BYTES
from monoscope.plan.throughput import ADAM_PASSES, SPARSE_FLOPS_PER_ENTRY_AND_WIDTH
from monoscope.runtime import parse_dtype
from monoscope.sae.topk import TopKFamilySAE

LABEL = 58
COLUMN = 18


def format_plan(plan: Plan) -> str:
    return "\n\n".join(
        [_heading(plan), _memory(plan), _store(plan), _time(plan.time, plan), _fit(plan)]
    )


def _heading(plan: Plan) -> str:
    cfg, shape = plan.cfg, plan.shape
    ranks = f"{shape.world_size} GPU{'s' * (shape.world_size > 1)}"
    layout = "feature-sharded" if cfg.shard_features else "data-parallel"
    return (
        f"plan: {cfg.arch} SAE of {shape.n_features:,} features ({count(shape.n_features)}) "
        f"x d {shape.d_in:,} ({plan.width.source}) at {cfg.site}, k {shape.k}, "
        f"batch {shape.batch_size:,}, {cfg.tokens:,} tokens ({count(cfg.tokens)}), {ranks}, "
        f"{layout}"
    )


def _row(label: str, *cells: str) -> str:
    return f"  {label:<{LABEL}}" + "".join(f"{c:>{COLUMN}}" for c in cells)


def _memory(plan: Plan) -> str:
    dp, sh = plan.data_parallel, plan.sharded
    chosen = 1 if plan.cfg.shard_features else 0
    names = ["data-parallel", "feature-sharded"]
    names[chosen] += " *"
    lines = [
        "memory per rank (* the layout planned; --shard-features picks feature-sharded)",
        _row("", *names),
        _row("latents on a rank / rows of a batch it encodes", *map(_layout, (dp, sh))),
    ]
    for part in sh.parts:
        cells = [gib(p.part(part.key)) if _has(p, part.key) else "-" for p in (dp, sh)]
        lines.append(_row(part.label, *cells))
    dense = f"[rows, F] {plan.shape.compute_dtype}"
    lines += [
        _row("peak: the trainer's blocked TopK step", gib(dp.peak), gib(sh.peak)),
        _row(f"peak with a dense GPU encoder (+ {dense})", gib(dp.dense_peak), gib(sh.dense_peak)),
        _row(
            "a checkpoint of a rank, on disk (weights and Adam)",
            gib(dp.checkpoint),
            gib(sh.checkpoint),
        ),
        _row(
            "host RAM of process 0: the whole SAE, gathered to save it",
            "-",
            gib(gather_bytes(plan.shape.n_features, plan.shape.d_in)),
        ),
    ]
    return "\n".join(lines + _workspace_note(plan))


def _workspace_note(plan: Plan) -> list[str]:
    """Why a workspace is larger than the residual, and how to make it not."""
    chosen = plan.chosen
    if chosen.part("workspace") <= chosen.residual:
        return []
    unit = TopKFamilySAE.column_block * (plan.shape.world_size if plan.cfg.shard_features else 1)
    return [
        f"  note: {plan.chosen.shape.features_per_rank:,} latents a rank have no divisor "
        f"from {TopKFamilySAE.column_block // 2} to {TopKFamilySAE.column_block} (the "
        f"selection's column block): its buffer holds {TopKFamilySAE.chunk_rows} rows x all "
        f"of them; --features a multiple of {unit:,} keeps it within the residual's [rows, d]"
    ]


def _layout(plan: MemoryPlan) -> str:
    return f"{count(plan.shape.features_per_rank)} / {plan.shape.rows_per_rank:,}"


def _has(plan: MemoryPlan, key: str) -> bool:
    return any(p.key == key for p in plan.parts)


def _store(plan: Plan) -> str:
    cfg, d = plan.cfg, plan.shape.d_in
    rows, overhead = plan.store
    itemsize = parse_dtype(cfg.store_dtype).itemsize
    text = (
        f"activation store ({cfg.store_dtype}, one site): {cfg.tokens:,} tokens x "
        f"({d:,} x {itemsize} B + {NORM_BYTES + INDEX_BYTES} B of norm and indices) = "
        f"{disk(rows + overhead)}\n  of which shard headers and the manifest: {disk(overhead)}"
        f" ({overhead / (rows + overhead):.2%})"
    )
    if parse_dtype(cfg.store_dtype) != parse_dtype(HarvestConfig.dtype):
        text += f"; harvest with --dtype {cfg.store_dtype} (its default is {HarvestConfig.dtype})"
    return text


def _time(estimate: Estimate, plan: Plan) -> str:
    head = (
        f"time (an estimate): {_duration(estimate.seconds)} for {count(plan.cfg.tokens)} tokens "
        f"at {_number(estimate.tokens_per_s)} tokens/s"
    )
    rates, step = estimate.rates, estimate.step
    if rates is None or step is None:
        return head + " (the run's throughput given by --tokens-per-s; nothing measured)"
    rows, d, columns = rates.matmul_shape
    shape = plan.shape
    return "\n  ".join(
        [
            head,
            f"from rates measured here on {rates.device} ({rates.dtype}): the encoder's matmul "
            f"[{rows}, {d}] @ [{d}, {columns}] at {rates.matmul_flops / 1e9:,.1f} GFLOP/s, fused "
            f"Adam at {rates.adam_seconds_per_parameter * 1e9:.3g} ns a parameter "
            f"({rates.adam_parameters:,} parameters)",
            f"a step of {shape.batch_size:,} tokens, on each rank: encoder matmul 2·rows·d·F "
            f"{_duration(step.matmul)} + sparse rest {SPARSE_FLOPS_PER_ENTRY_AND_WIDTH}·k·d a row "
            f"{_duration(step.sparse)} + Adam x{ADAM_PASSES:g} over "
            f"{count(shape.parameters_per_rank)} parameters {_duration(step.optimizer)} + "
            f"communication of {disk(step.communication_bytes)} at {plan.cfg.link_gb_s:g} GB/s "
            f"{_duration(step.communication)} = {_duration(step.total)}",
            "rates at a scaled-down shape scaled by FLOPs and parameters; sparse kernels, data "
            "loading and overlap not modelled (monoscope/plan/throughput.py)",
        ]
        + ([] if rates.device.startswith("cuda") else [_not_a_gpu(rates.device)])
    )


def _not_a_gpu(device: str) -> str:
    return (
        f"measured on {device}, not on the run's GPUs: on a GPU machine run plan there with "
        "--device cuda, or give the run's throughput with --tokens-per-s"
    )


def _fit(plan: Plan) -> str:
    memory = plan.memory
    if memory is None:
        return "fit: not checked (no --gpu-mem given, and this machine has no GPU)"
    chosen = plan.chosen
    budget = usable(memory.total)
    head = (
        f"fit in {gib(memory.total)} a GPU ({memory.source}; {1 - HEADROOM:.0%} usable: "
        f"{gib(budget)}): "
    )
    need = gib(required(chosen))
    if memory.fits:
        dense = "fits too" if memory.dense_fits else f"does not ({gib(chosen.dense_peak)})"
        return f"{head}yes, the step needs {need} a rank; with a dense GPU encoder it {dense}"
    fixes = "; ".join(memory.fixes) if memory.fixes else "a GPU with more memory"
    return f"{head}NO, the step needs {need} a rank\n  to fit, change one: {fixes}"


def _duration(seconds: float) -> str:
    units = (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for unit, size in (*units, ("ms", 1e-3)):
        if seconds >= size:
            return f"{_number(seconds / size)} {unit}"
    return f"{_number(seconds * 1e6)} µs"


def _number(value: float) -> str:
    """Three significant digits, without an exponent: 1.34, 25.1, 1,234."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
