"""`Accumulator`: per-feature statistics and example samples, updated one encoded batch at a time.

Every update works on the batch's non-zero activations as flat (row, feature, value) entries:
counts, sums and maxima by bincount / index_add / scatter_reduce, histograms by one bincount
over feature * n_bins + bin. Samples keep, per group (a feature for the top examples, a feature's
activation interval for the interval samples), the best m entries by one int64 sort key
(group << 32 | rank key). An entry that cannot beat its group's current m-th is dropped at once;
the others wait in a pending list that is merged into the samples by one sort when it grows past
MERGE_AT entries (and before a checkpoint or the results). No Python loop runs over features,
and memory depends on n_features and the options, not on the number of tokens. The results do
not depend on when merges happen, nor on the batch size: ties go to the earlier token.

Memory. The state is a fixed size per feature, whatever the number of tokens
(`state_bytes_per_feature`): with analyze's defaults 3,144 bytes (top examples 20 x 12, the
fine interval samples 10 x 4 x 3 x 20, the histogram 50 x 8, co-occurrence counts 10 x 8, and
28 of counts, sums and maxima), so 3.3 GB at 1M features. Merges and updates work on the entries
held and the batch's non-zero activations, never on a [n_features, ...] temporary beyond
[n_features] itself; the pending candidates are bounded by MERGE_AT.

Examples are located by `loc` = context_index * context_length + position (int64), unique in a
store.

Interval samples. The intervals split [0, max] of each feature linearly, but the max is only
known at the end of the pass. So each feature keeps finer intervals (FINE_PER_INTERVAL per final
one) over [0, 2^e), where 2^e is its running max rounded up to a power of two, each with a
sample of `quantile_examples` entries by smallest hash key (see sampling.py). When the max passes
2^e, e grows by d and fine interval b becomes b >> d: whole fine intervals merge, so their
samples merge exactly. At the end each sampled entry goes to the final interval its activation
falls in, and each final interval keeps its smallest keys. Membership is exact; the sample is
uniform within an interval except that the (at most two) fine intervals straddling its edges
may be under-represented, as they were sampled together with their part outside it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from monoscope.analyze.codes import CodeCache
from monoscope.analyze.config import AnalyzeConfig
from monoscope.analyze.sampling import KEY_EMPTY, hash_keys, top_per_group
from monoscope.runtime import intra_op_threads

FINE_PER_INTERVAL = 4
"""Fine intervals kept per final quantile interval (the final max is at most 2x off 2^e, so each
final interval covers at least 2 fine ones)."""
POOL_PER_EXAMPLE = 32
"""Random candidate tokens kept per requested non-firing example: a feature firing on more than
1 - 1/32 of the candidates gets fewer than asked."""
MERGE_AT = 1 << 20
"""Pending candidates (per kind of sample) that trigger a merge, unless the samples hold more."""
BOOKKEEPING_THREADS = 1
"""Threads of the per-batch bookkeeping: its ops are small (see runtime.intra_op_threads)."""
EXPONENT_NONE = -200
"""Fine-interval exponent of a feature that has not fired (2.0**-200 is 0 in float32)."""


def state_bytes_per_feature(cfg: AnalyzeConfig) -> int:
    """Bytes of the Accumulator's state per feature under `cfg`'s options (the state is this
    times n_features plus a constant; see the module docstring), measured on the tensors."""

    def size(n: int) -> int:
        neighbours = torch.zeros(n, cfg.neighbours, dtype=torch.int64)
        acc = Accumulator.for_config(cfg, n, neighbours)
        return sum(t.nbytes for t in acc.state.values())

    return size(2) - size(1)


def _count(counts: Tensor, index: Tensor) -> None:
    """counts[i] += occurrences of i in index (int64), in work and memory proportional to
    index, not to counts (a bincount of the state's size would allocate and add all of it,
    400 MB a batch for the histograms of 1M features)."""
    counts.index_put_((index,), torch.ones_like(index), accumulate=True)


def _descending(values: Tensor) -> Tensor:
    """int64 rank keys of values >= 0 (float32), larger values first: the bits of a
    non-negative float32 order like the float."""
    return 0x7FFFFFFF - values.float().view(torch.int32).long()


class Accumulator:
    """Running state of one analysis pass over n_features features.

    Options: top_n, n_quantiles, quantile_examples, random_examples, n_bins, seed (as in
    AnalyzeConfig); neighbour_index [n_features, k] int64 lists the neighbours whose
    co-occurrence is counted (k may be 0); `cache`, if given, receives every batch's entries.
    """

    @classmethod
    def for_config(
        cls,
        cfg: AnalyzeConfig,
        n_features: int,
        neighbour_index: Tensor,
        cache: CodeCache | None = None,
    ) -> Accumulator:
        """An accumulator with `cfg`'s options (see the class's)."""
        return cls(
            n_features,
            top_n=cfg.top_n,
            n_quantiles=cfg.n_quantiles,
            quantile_examples=cfg.quantile_examples,
            random_examples=cfg.random_examples,
            n_bins=cfg.n_bins,
            seed=cfg.seed,
            neighbour_index=neighbour_index,
            cache=cache,
        )

    def __init__(
        self,
        n_features: int,
        *,
        top_n: int,
        n_quantiles: int,
        quantile_examples: int,
        random_examples: int,
        n_bins: int,
        seed: int,
        neighbour_index: Tensor,
        cache: CodeCache | None = None,
    ) -> None:
        f, k = n_features, neighbour_index.shape[1]
        self.n_features, self.n_bins, self.seed = f, n_bins, seed
        self.n_quantiles, self.fine = n_quantiles, n_quantiles * FINE_PER_INTERVAL
        self.per_interval, self.random_examples = quantile_examples, random_examples
        self.neighbour_index, self.cache = neighbour_index, cache
        m, pool = max(quantile_examples, 1), POOL_PER_EXAMPLE * max(random_examples, 1)
        i64 = torch.int64
        self.state: dict[str, Tensor] = {
            "tokens_seen": torch.zeros((), dtype=i64),
            "last_loc": torch.full((), -1, dtype=i64),  # of the last token seen
            "n_fired": torch.zeros(f, dtype=i64),
            "act_sum": torch.zeros(f, dtype=torch.float64),
            "act_max": torch.zeros(f),
            "hist": torch.zeros(f * n_bins, dtype=i64),
            "log10_edges": torch.zeros(0, dtype=torch.float64),  # set by the first firing
            "top_values": torch.zeros(f, top_n),  # descending; 0 = empty slot
            "top_locs": torch.full((f, top_n), -1, dtype=i64),
            "fine_exponent": torch.full((f,), EXPONENT_NONE, dtype=torch.int32),  # 2^e
            "fine_keys": torch.full((f * self.fine, m), KEY_EMPTY, dtype=i64),  # ascending
            "fine_values": torch.zeros(f * self.fine, m),
            "fine_locs": torch.full((f * self.fine, m), -1, dtype=i64),
            "pool_keys": torch.full((pool,), KEY_EMPTY, dtype=i64),
            "pool_locs": torch.full((pool,), -1, dtype=i64),
            "cooccur": torch.zeros(f, k, dtype=i64),
        }
        self._pending_top: list[tuple[Tensor, ...]] = []
        self._pending_fine: list[tuple[Tensor, ...]] = []
        self._thresholds()

    # -- the pass ----------------------------------------------------------------------------
    def update(self, f: Tensor, locs: Tensor) -> None:
        """Add a batch: activations f [b, n_features] (the SAE's reporting convention), at
        token locations locs [b] int64."""
        with torch.no_grad(), intra_op_threads(BOOKKEEPING_THREADS):
            self._update(f, locs)

    def _update(self, f: Tensor, locs: Tensor) -> None:
        rows, feats = f.nonzero(as_tuple=True)
        values = f[rows, feats]
        if (values < 0).any():  # a feature fires when its activation is > 0
            keep = values > 0
            rows, feats, values = rows[keep], feats[keep], values[keep]
        values, where = values.float(), locs[rows]
        s = self.state
        s["tokens_seen"] += f.shape[0]
        s["last_loc"].fill_(locs[-1])
        if self.cache is not None:
            self.cache.add(rows, feats, values, locs)
        _count(s["n_fired"], feats)
        s["act_sum"].index_add_(0, feats, values.double())
        s["act_max"].scatter_reduce_(0, feats, values, "amax")
        if values.numel():
            self._histogram(feats, values)
            better = values > self._top_threshold[feats]  # ties keep the earlier token
            self._pending_top.append((feats[better], values[better], where[better]))
            if self.per_interval:
                self._fine_candidates(feats, values, where)
            if self.neighbour_index.shape[1]:
                self._cooccur(f, rows, feats)
        if self.random_examples:
            self._pool(locs)
        if self._pending_size(self._pending_top) > max(MERGE_AT, s["top_locs"].numel()):
            self._merge_top()
        if self._pending_size(self._pending_fine) > max(MERGE_AT, s["fine_locs"].numel()):
            self._merge_fine()

    def _histogram(self, feats: Tensor, values: Tensor) -> None:
        s = self.state
        if not s["log10_edges"].numel():
            # Edges from the first batch with any firing, a decade of margin above; values
            # outside them land in the first or last bin.
            low = math.floor(math.log10(float(values.min())))
            high = max(math.ceil(math.log10(float(values.max()))) + 1, low + 1)
            s["log10_edges"] = torch.linspace(low, high, self.n_bins + 1, dtype=torch.float64)
        bins = torch.bucketize(values.double().log10(), s["log10_edges"][1:-1], right=True)
        _count(s["hist"], feats * self.n_bins + bins)

    def _fine_candidates(self, feats: Tensor, values: Tensor, where: Tensor) -> None:
        keys = hash_keys(where * self.n_features + feats, seed=self.seed)
        # Against the samples' current intervals; a feature whose max has since outgrown
        # them has no valid threshold until the next merge re-buckets it.
        bucket = self._fine_bucket(values, self.state["fine_exponent"][feats])
        better = keys < self._fine_threshold[feats * self.fine + bucket]
        better |= values >= torch.ldexp(torch.ones_like(values), self.state["fine_exponent"][feats])
        self._pending_fine.append((feats[better], values[better], where[better], keys[better]))

    def _fine_bucket(self, values: Tensor, exponent: Tensor) -> Tensor:
        """Fine interval of each value in [0, 2^exponent) (clamped): exact in float64, as
        values * fine is exact there and the power of two divides exactly."""
        scaled = torch.ldexp(values.double() * self.fine, -exponent.long())
        return scaled.clamp_(max=self.fine - 1).long()

    def _pool(self, locs: Tensor) -> None:
        """Keep the tokens with the smallest hash keys: a uniform sample of the stream."""
        s = self.state
        keys = torch.cat([s["pool_keys"], hash_keys(locs, seed=self.seed + 1)])
        order = torch.sort(keys, stable=True).indices[: s["pool_keys"].numel()]
        s["pool_locs"] = torch.cat([s["pool_locs"], locs])[order]
        s["pool_keys"] = keys[order]

    def _cooccur(self, f: Tensor, rows: Tensor, feats: Tensor) -> None:
        """Count, for each firing (token, feature) and each of the feature's neighbours,
        whether the neighbour fires on that token too."""
        n, k = self.n_features, self.neighbour_index.shape[1]
        neighbours = self.neighbour_index[feats]  # [nnz, k]
        hits = f.reshape(-1)[rows[:, None] * n + neighbours] > 0  # [nnz, k]
        slots = feats[:, None] * k + torch.arange(k)
        _count(self.state["cooccur"].view(-1), slots[hits])

    # -- merging the pending candidates ----------------------------------------------------
    @staticmethod
    def _pending_size(pending: list[tuple[Tensor, ...]]) -> int:
        return sum(p[0].numel() for p in pending)

    def flush(self) -> None:
        """Merge every pending candidate into the samples (before a checkpoint or results)."""
        with torch.no_grad(), intra_op_threads(BOOKKEEPING_THREADS):
            self._flush()

    def _flush(self) -> None:
        if self._pending_top:
            self._merge_top()
        if self._pending_fine:
            self._merge_fine()

    def _merge_top(self) -> None:
        s, n = self.state, self.state["top_values"].shape[1]
        feats, values, where = (torch.cat(p) for p in zip(*self._pending_top, strict=True))
        self._pending_top = []
        # Only the filled slots: the work and memory of a merge follow the samples held,
        # not n_features x top_n.
        held = (s["top_locs"].flatten() >= 0).nonzero().flatten()
        groups = torch.cat([held // n, feats])
        all_values = torch.cat([s["top_values"].flatten()[held], values])
        all_locs = torch.cat([s["top_locs"].flatten()[held], where])
        index, rank = top_per_group(groups, _descending(all_values), n)
        s["top_values"].zero_()
        s["top_locs"].fill_(-1)
        s["top_values"][groups[index], rank] = all_values[index]
        s["top_locs"][groups[index], rank] = all_locs[index]
        self._thresholds()

    def _merge_fine(self) -> None:
        """Re-bucket every sample under its feature's current exponent (the max seen so far,
        rounded up to a power of two), add the pending candidates, keep each fine interval's
        smallest keys."""
        s, fine = self.state, self.fine
        fired = s["act_max"] > 0
        exponent = torch.frexp(s["act_max"]).exponent  # act_max < 2^exponent
        s["fine_exponent"] = torch.where(fired, exponent, EXPONENT_NONE).int()
        m = s["fine_keys"].shape[1]
        feats, values, where, keys = (torch.cat(p) for p in zip(*self._pending_fine, strict=True))
        self._pending_fine = []
        held = (s["fine_locs"].flatten() >= 0).nonzero().flatten()
        all_feats = torch.cat([held // (fine * m), feats])
        all_values = torch.cat([s["fine_values"].flatten()[held], values])
        all_locs = torch.cat([s["fine_locs"].flatten()[held], where])
        all_keys = torch.cat([s["fine_keys"].flatten()[held], keys])
        bucket = self._fine_bucket(all_values, s["fine_exponent"][all_feats])
        groups = all_feats * fine + bucket
        index, rank = top_per_group(groups, all_keys, m)
        for name, source, empty in (
            ("fine_keys", all_keys, KEY_EMPTY),
            ("fine_values", all_values, 0.0),
            ("fine_locs", all_locs, -1),
        ):
            s[name].fill_(empty)
            s[name][groups[index], rank] = source[index]
        self._thresholds()

    def _thresholds(self) -> None:
        """What a new candidate must beat: its feature's n-th top value, its fine interval's
        m-th smallest key (empty slots: anything passes)."""
        self._top_threshold = self.state["top_values"][:, -1].clone()
        self._fine_threshold = self.state["fine_keys"][:, -1].clone()

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Continue from a checkpointed `state` (saved after `flush`)."""
        self.state = state
        self._thresholds()

    # -- results -----------------------------------------------------------------------------
    @property
    def tokens_seen(self) -> int:
        return int(self.state["tokens_seen"])

    def top_examples(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(feature, rank, activation, loc) [e] of every kept top example."""
        self.flush()
        s = self.state
        feature, rank = (s["top_locs"] >= 0).nonzero(as_tuple=True)
        return feature, rank, s["top_values"][feature, rank], s["top_locs"][feature, rank]

    def interval_examples(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(feature, interval, rank, activation, loc) [e]: each final interval's sample."""
        self.flush()
        s, q = self.state, self.n_quantiles
        if not self.per_interval:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty, empty, torch.zeros(0), empty
        row, slot = (s["fine_locs"] >= 0).nonzero(as_tuple=True)
        feature = row // self.fine
        values = s["fine_values"][row, slot]
        interval = (values.double() / s["act_max"][feature].double() * q).long().clamp_(0, q - 1)
        index, rank = top_per_group(
            feature * q + interval, s["fine_keys"][row, slot], self.per_interval
        )
        locs = s["fine_locs"][row, slot]
        return feature[index], interval[index], rank, values[index], locs[index]

    def pool_locs(self) -> Tensor:
        """The random candidate tokens [c], in sample order."""
        locs = self.state["pool_locs"]
        return locs[locs >= 0]

    def hist(self) -> Tensor:
        return self.state["hist"].view(self.n_features, self.n_bins)

    def log10_edges(self) -> Tensor:
        """[n_bins + 1] log10 activation edges (a default range if nothing ever fired)."""
        edges = self.state["log10_edges"]
        return edges if edges.numel() else torch.linspace(-2, 2, self.n_bins + 1).double()
