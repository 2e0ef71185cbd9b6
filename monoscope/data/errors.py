"""The one exception type for corpora that cannot be read as asked."""

from __future__ import annotations


class CorpusError(ValueError):
    """Bad corpus input; the message names the file (and line) at fault."""
