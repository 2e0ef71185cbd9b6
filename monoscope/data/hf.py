"""Documents from a Hugging Face dataset (hub name or local dataset folder), streamed."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import CorpusError

# Large enough to mix neighbouring documents, small enough to keep memory flat.
_SHUFFLE_BUFFER = 10_000


def iter_hf_documents(
    name: str, config: str | None, split: str, text_field: str, seed: int
) -> Iterator[str]:
    datasets = _import_datasets()
    source = f"hf:{name}"
    try:
        ds = datasets.load_dataset(name, name=config, split=split, streaming=True)
    except (FileNotFoundError, ValueError) as e:
        # Unknown dataset, config or split: bad input, not a crash.
        raise CorpusError(
            f"{source}: cannot load dataset (config={config!r}, split={split!r}): {e}"
        ) from e
    if ds.column_names is not None and text_field not in ds.column_names:
        raise CorpusError(f"{source}: no column {text_field!r}; its columns are {ds.column_names}")
    for i, example in enumerate(ds.shuffle(seed=seed, buffer_size=_SHUFFLE_BUFFER)):
        # Streams without declared features only reveal their keys example by example.
        if text_field not in example:
            raise CorpusError(
                f"{source}: example {i} has no field {text_field!r}; its keys are {sorted(example)}"
            )
        text = example[text_field]
        if not isinstance(text, str):
            raise CorpusError(
                f"{source}: example {i}: field {text_field!r} is {type(text).__name__}, "
                "not a string"
            )
        yield text


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "Hugging Face corpora need the datasets library: pip install 'monoscope[hf]'"
        ) from e
    return datasets
