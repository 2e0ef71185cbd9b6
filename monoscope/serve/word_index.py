"""Which explanations contain a word, found through an index of their tokens.

A search word holds no whitespace (the query is split on it, by `str.split`'s rule), so
wherever it occurs in an explanation it lies inside one of the explanation's
whitespace-separated tokens; and it occurs in the explanation exactly when it occurs in one of
them. The index keeps, for each distinct token of the case-folded explanations, the ascending
ids of the explanations holding it. A word's explanations are then those of the tokens
containing it, found by one scan of the tokens' joined text: a million explanations hold tens
of millions of characters but only tens of thousands of distinct tokens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import chain, count

import numpy as np

CHUNK = 100_000
"""Explanations split and numbered at a time while building (bounds the Python objects)."""
SCAN_SHARE = 0.25
"""A word whose tokens hold more than this share of all (token, feature) pairs (a letter or
two) is looked up by one pass over all pairs rather than by gathering each token's features:
about the cost of the gather's several passes over its own pairs."""
_END = "\x00"
"""Marks the end of each text when a chunk of them is joined and split in one call."""


class WordIndex:
    """For each distinct token of the case-folded texts, the ids of the texts holding it.

    Kept: 4 bytes per distinct (token, text) pair, plus the tokens' text and 24 bytes a token
    (a million explanations of ~10 words: ~40 MB). Built in about 2 s for those on one CPU
    core, with about twice that memory at the peak.
    """

    def __init__(self, texts: Sequence[str | None], chunk: int = CHUNK) -> None:
        """Index `texts` (None for a missing one); text i is feature i."""
        self.n = len(texts)
        stride = max(self.n, 1)
        vocab: defaultdict[str, int] = defaultdict(count().__next__)
        vocab[_END]  # token 0: its features are the texts holding a lone NUL (rare)
        parts = [_pairs(texts[s : s + chunk], s, stride, vocab) for s in range(0, self.n, chunk)]
        keys = np.empty(sum(map(len, parts)), dtype=np.int64)
        end = len(keys)
        while parts:  # each chunk's pairs freed once copied: half the memory of a concatenate
            part = parts.pop()
            keys[end - len(part) : end] = part
            end -= len(part)
        keys.sort()  # by token, then feature: keys are token id * stride + feature
        self._offsets = np.searchsorted(keys, np.arange(len(vocab) + 1) * stride)
        """[tokens + 1] token t's features are _features[_offsets[t]:_offsets[t + 1]]."""
        self._counts = np.diff(self._offsets)
        """[tokens] how many features hold each token."""
        np.remainder(keys, stride, out=keys)
        self._features = keys.astype(np.int32)
        """[pairs] ascending feature ids, token after token."""
        lengths = np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
        self._starts = np.cumsum(lengths + 1) - (lengths + 1)
        """[tokens] where each token starts in _text."""
        self._text = _codes("".join(token + " " for token in vocab))
        """[characters] the tokens' code points, each token followed by a space."""

    @property
    def n_tokens(self) -> int:
        return len(self._counts)

    def containing(self, word: str) -> np.ndarray:
        """[n] bool (a new array): the texts whose case-folded form holds `word`, itself
        case-folded, non-empty and without whitespace."""
        if word.split() != [word]:
            raise ValueError(f"a word to look up holds no whitespace and is not empty: {word!r}")
        tokens = self._tokens_with(word)
        counts = self._counts[tokens]
        hits = np.zeros(self.n, dtype=bool)
        if counts.sum() <= SCAN_SHARE * len(self._features):  # gather the tokens' own lists
            # The j-th pair gathered, of token t: _features[_offsets[t] + j - pairs before t].
            shift = np.repeat(self._offsets[tokens] - (np.cumsum(counts) - counts), counts)
            hits[self._features[shift + np.arange(len(shift))]] = True
        else:
            chosen = np.zeros(self.n_tokens, dtype=bool)
            chosen[tokens] = True
            hits[self._features[np.repeat(chosen, self._counts)]] = True
        return hits

    def _tokens_with(self, word: str) -> np.ndarray:
        """Ascending ids of the tokens containing `word` (no whitespace): one vectorised
        pass over the tokens' text for its first character, then the places found so far
        checked character by character (spaces end every token, so no place runs past one)."""
        code = _codes(word)
        if code.itemsize > self._text.itemsize:  # a character that no token holds
            return np.zeros(0, dtype=np.int64)
        at = np.flatnonzero(self._text == code[0])
        for k in range(1, len(code)):
            if not len(at):  # a long word no token holds: stop here
                break
            at = at[self._text[at + k] == code[k]]
        tokens = np.searchsorted(self._starts, at, side="right") - 1
        return tokens[np.r_[True, tokens[1:] != tokens[:-1]]] if len(tokens) else tokens


def _pairs(
    texts: Sequence[str | None], first: int, stride: int, vocab: defaultdict[str, int]
) -> np.ndarray:
    """[pairs] int64, ascending and distinct: token id * stride + feature, for each token of
    each case-folded texts[i] (feature first + i). `vocab` numbers new tokens in turn and
    holds _END as token 0."""
    strings = [t or "" for t in texts]
    joined = f" {_END} ".join(strings) + f" {_END}"
    if joined.count(_END) == len(strings):  # no text holds one: split them all at once
        ids = _ids(joined.lower().split(), vocab)
        ends = ids == 0
        features = first + np.cumsum(ends)  # the _ENDs before a token: its text's number
        ids, features = ids[~ends], features[~ends]
    else:  # rare: split each text on its own
        split = [t.lower().split() for t in strings]
        ids = _ids(list(chain.from_iterable(split)), vocab)
        lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        features = np.repeat(np.arange(first, first + len(split)), lengths)
    return sorted_unique(ids * stride + features)


def _ids(tokens: list[str], vocab: defaultdict[str, int]) -> np.ndarray:
    """[len(tokens)] int64 each token's number in `vocab` (new ones numbered by its default
    factory): one C-level pass, with no Python code run per token."""
    return np.fromiter(map(vocab.__getitem__, tokens), dtype=np.int64, count=len(tokens))


def _codes(text: str) -> np.ndarray:
    """[len(text)] the code points of `text` (lone surrogates too), in the narrowest unsigned
    integer type that holds them all (ASCII text: one byte a character)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    top = int(codes.max()) if len(codes) else 0
    return codes.astype(np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.uint32)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based unique is several times slower here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values
