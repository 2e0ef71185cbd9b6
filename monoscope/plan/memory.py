"""Memory per rank of a TopK-family training step, part by part, from the trainer's layout.

What each part counts (F latents and `rows` batch rows on the rank, width d):
- weights: W_enc [d, F], W_dec [F, d], b_enc [F], b_dec [d], float32 (the master weights stay
  float32 under --compute-dtype bfloat16).
- Adam: exp_avg and exp_avg_sq of every weight (torch's fused Adam, no temporaries).
- gradients: one weight gradient at a time, and the biases'. The TopK step forms W_enc's in
  W_dec's memory once W_dec has taken its step (monoscope/train/step.py,
  monoscope/sae/step_memory.py). While latents are dead, AuxK forms its own W_dec gradient
  [F, d] whole before autograd adds it in (monoscope/sae/topk.py, `_aux_loss`), so the peak
  holds a second weight gradient: counted, as a long run has dead latents.
- batch: the step's [rows, d] float32, and the next batch read ahead in the store's dtype.
- workspace: the selection's blocks of pre-activations, then the [rows, d] float32 residual,
  in one buffer (monoscope.sae.topk.selection_layout): the residual's size when the blocks fit
  in it, which needs a divisor of F from 576 to 1152 (the column block); else chunk_rows x F.
- selection: each row's m candidates (a float32 value, an int64 index) and the chosen entries,
  k a row plus AuxK's d/2, with their CSR indices, values and transposes: ENTRY_BYTES each.
- per-latent state: dead-latent counters, fired and dead masks, firing counts, the transposes'
  row pointers, the deferred gradient's column bounds: LATENT_BYTES a latent.
- feature-sharded only: the all-gathered candidates [batch, N m] and the [batch, d] partial
  decode that is all-reduced.
The blocked step above is the trainer's. A dense GPU encoder would also hold the [rows, F]
pre-activations in the compute dtype: `MemoryPlan.dense_peak`.
"""

from __future__ import annotations

from dataclasses import dataclass

from monoscope.runtime import parse_dtype
from monoscope.sae.topk import selection_layout

FLOAT = 4
CANDIDATE_BYTES = 4 + 8
"""A candidate: its float32 pre-activation and int64 latent index."""
ENTRY_BYTES = 48
"""A chosen entry's tensors in the step (an estimate from sparse.py's kernels): the pattern's
int64 column, its transpose's int64 order and row, float32 values, ReLU'd values, their
gradient and the sampled product's zeros, the active mask."""
LATENT_BYTES = 40
"""Per-latent vectors of a step: int64 tokens-since-fired, two int64 row pointers of the
transposes, float32 firing counts, column bounds and idle mask, three bool masks."""


@dataclass(frozen=True)
class StepShape:
    """The sizes of one training step on one rank of `world_size`."""

    n_features: int
    d_in: int
    batch_size: int
    k: int
    world_size: int = 1
    shard_features: bool = False
    candidates_per_row: int = 0
    """m: candidates each row offers the selection (0: k, as TopK's)."""
    compute_dtype: str = "float32"
    store_dtype: str = "bfloat16"

    @property
    def features_per_rank(self) -> int:
        """F on a rank: all of them, or (feature-sharded) a 1/N slice."""
        if self.shard_features:
            return -(-self.n_features // self.world_size)
        return self.n_features

    @property
    def rows_per_rank(self) -> int:
        """Batch rows a rank encodes: a 1/N part (data-parallel), or every row (sharded)."""
        return self.batch_size if self.shard_features else -(-self.batch_size // self.world_size)

    @property
    def m(self) -> int:
        return self.candidates_per_row or self.k

    @property
    def parameters_per_rank(self) -> int:
        return parameters(self.features_per_rank, self.d_in)


def parameters(n_features: int, d_in: int) -> int:
    """W_enc, W_dec, b_enc and b_dec's values for `n_features` latents of width `d_in`."""
    return 2 * d_in * n_features + n_features + d_in


@dataclass(frozen=True)
class Part:
    key: str
    label: str
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    shape: StepShape
    parts: tuple[Part, ...]
    """The blocked step's parts (the trainer's), each at its largest within a step."""
    dense_preactivations: int
    """[rows, F] in the compute dtype: what a dense encoder adds."""
    checkpoint: int
    """Bytes a checkpoint holds: the weights and Adam's moments (written from where they are,
    a piece at a time: no memory beyond the step's)."""

    def part(self, key: str) -> int:
        return next(p.bytes for p in self.parts if p.key == key)

    @property
    def peak(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def residual(self) -> int:
        """The step's [rows, d] float32 residual: the workspace's size when the blocked
        selection's buffer fits in it."""
        return FLOAT * self.shape.rows_per_rank * self.shape.d_in

    @property
    def dense_peak(self) -> int:
        """The peak of a step that holds the [rows, F] pre-activations instead of the blocked
        selection's buffer (its residual stays)."""
        return self.peak - self.part("workspace") + self.residual + self.dense_preactivations


def memory_plan(shape: StepShape) -> MemoryPlan:
    """Bytes per rank of each part of a training step of `shape` (see the module's note)."""
    f, d, rows = shape.features_per_rank, shape.d_in, shape.rows_per_rank
    weights = FLOAT * shape.parameters_per_rank
    store_bytes = parse_dtype(shape.store_dtype).itemsize
    parts = [
        Part("weights", "weights (W_enc, W_dec, b_enc, b_dec; float32)", weights),
        Part("adam", "Adam's two moments (float32)", 2 * weights),
        Part(
            "gradients",
            "gradients (one weight gradient at a time, biases)",
            FLOAT * (d * f + f + d),
        ),
        Part("auxk", "AuxK's W_dec gradient (while latents are dead)", FLOAT * d * f),
        Part(
            "batch",
            f"batch [rows, d] float32 + the next in {shape.store_dtype}",
            rows * d * (FLOAT + store_bytes),
        ),
        Part(
            "workspace",
            "step workspace (blocked selection, then residual)",
            FLOAT * max(rows * d, -(-selection_buffer(shape) // FLOAT)),
        ),
        Part(
            "selection",
            f"selection ({shape.m} candidates, k + d/2 entries a row)",
            rows * (shape.m * CANDIDATE_BYTES + (shape.k + d // 2) * ENTRY_BYTES),
        ),
        Part("latents", "per-latent state (dead counters, masks, counts)", LATENT_BYTES * f),
    ]
    if shape.shard_features:
        gathered = shape.batch_size * shape.world_size * shape.m * CANDIDATE_BYTES
        parts.append(
            Part(
                "gathered",
                "all-gathered candidates + partial decode",
                gathered + FLOAT * shape.batch_size * d,
            )
        )
    dense = rows * f * parse_dtype(shape.compute_dtype).itemsize
    return MemoryPlan(shape, tuple(parts), dense, 3 * weights)


def selection_buffer(shape: StepShape) -> int:
    """Bytes of the buffer the blocked selection computes pre-activations into on a rank, as
    the trainer lays it out (monoscope.sae.topk.selection_layout)."""
    f, rows = shape.features_per_rank, shape.rows_per_rank
    itemsize = parse_dtype(shape.compute_dtype).itemsize
    parts, size, w = selection_layout(f, rows, itemsize, FLOAT * rows * shape.d_in)
    return f // w // parts * size * w * itemsize
