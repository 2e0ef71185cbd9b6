"""monoscope.data: corpora from every source, packing, and every bad-input error."""

from __future__ import annotations

import ast
import json
from itertools import islice
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monoscope.data import (
    CorpusError,
    CorpusSpec,
    builtin_corpus_documents,
    count_tokens,
    iter_contexts,
    iter_documents,
)
from monoscope.data.builtin import document_refs
from monoscope.testing import tiny_tokenizer


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def docs(source: Path | str, **kw) -> list[str]:
    return list(iter_documents(CorpusSpec(str(source), **kw)))


# ---- packing ---------------------------------------------------------------------------------


def test_packing_layout_bos_eos_and_doc_ids(tmp_path):
    texts = ["aaaaa", "bbb", "cccccccc", "dd"]
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    tok = tiny_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    # Expected stream: doc tokens, EOS (owned by the doc it ends) between documents.
    stream: list[tuple[int, int]] = []
    for i, t in enumerate(texts):
        if i:
            stream.append((eos, i - 1))
        stream += [(tok.convert_tokens_to_ids(t[0]), i)] * len(t)
    context_len = 5
    body = context_len - 1
    contexts = list(iter_contexts(CorpusSpec(str(path)), tok, context_len))

    assert len(contexts) == len(stream) // body  # final partial context dropped
    for k, ctx in enumerate(contexts):
        piece = stream[k * body : (k + 1) * body]
        assert len(ctx.tokens) == len(ctx.doc_ids) == context_len
        assert ctx.tokens == [bos] + [t for t, _ in piece]
        assert ctx.doc_ids == [piece[0][1]] + [d for _, d in piece]
    assert eos in contexts[1].tokens


def test_packing_is_deterministic_and_seeded(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.txt").write_text(f"document number {i} " * (i + 1))
    tok = tiny_tokenizer()

    def run(seed: int) -> list[list[int]]:
        return [c.tokens for c in iter_contexts(CorpusSpec(str(tmp_path), seed=seed), tok, 16)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_bos_falls_back_to_eos_and_no_eos_means_no_separator(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "ab"}, {"text": "cd"}])
    no_bos = tiny_tokenizer(bos=False)
    (ctx,) = iter_contexts(CorpusSpec(str(path)), no_bos, 6)
    assert ctx.tokens[0] == no_bos.eos_token_id
    assert ctx.doc_ids == [0, 0, 0, 0, 1, 1]

    no_eos = tiny_tokenizer(eos=False)
    (ctx,) = iter_contexts(CorpusSpec(str(path)), no_eos, 5)
    assert ctx.tokens == [no_eos.bos_token_id, *no_eos.convert_tokens_to_ids(list("abcd"))]
    assert ctx.doc_ids == [0, 0, 0, 1, 1]


def test_packing_errors(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "abc"}])
    spec = CorpusSpec(str(path))
    with pytest.raises(CorpusError, match="context_len"):
        iter_contexts(spec, tiny_tokenizer(), 1)
    with pytest.raises(CorpusError, match="neither a BOS nor an EOS"):
        iter_contexts(spec, tiny_tokenizer(bos=False, eos=False), 4)
    with pytest.raises(CorpusError, match="3 tokens, too few for one context of 5"):
        list(iter_contexts(spec, tiny_tokenizer(), 5))
    assert len(list(iter_contexts(spec, tiny_tokenizer(), 4))) == 1


def test_count_tokens(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in ["ab", "cde", "é"]])
    spec = CorpusSpec(str(path))
    assert count_tokens(spec, tiny_tokenizer()) == {"documents": 3, "tokens": 7}
    assert count_tokens(spec, tiny_tokenizer(), limit_docs=2) == {"documents": 2, "tokens": 5}


# ---- local files -----------------------------------------------------------------------------


def test_txt_is_one_document(tmp_path):
    text = "First paragraph.\n\nSecond paragraph.\n"
    (tmp_path / "a.txt").write_text(text)
    assert docs(tmp_path / "a.txt") == [text]


def test_jsonl_skips_blank_lines_and_uses_text_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "one", "n": 1}\n\n   \n{"body": "two"}\n')
    assert docs(path, text_field="body") == ["one", "two"]


def test_parquet_reads_every_row_group(tmp_path):
    path = tmp_path / "a.parquet"
    rows = [f"row {i}" for i in range(7)]
    pq.write_table(pa.table({"content": rows, "n": list(range(7))}), path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 4
    assert docs(path, text_field="content") == rows


def test_folder_is_recursive_and_seeded(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("alpha")
    write_jsonl(tmp_path / "sub" / "b.jsonl", [{"text": "beta"}, {"text": "gamma"}])
    pq.write_table(pa.table({"text": ["delta"]}), tmp_path / "sub" / "deeper" / "c.parquet")
    (tmp_path / "notes.md").write_text("not a corpus file")
    for i in range(5):
        (tmp_path / f"z{i}.txt").write_text(f"zeta {i}")

    first = docs(tmp_path)
    assert sorted(first) == sorted(
        ["alpha", "beta", "gamma", "delta"] + [f"zeta {i}" for i in range(5)]
    )
    assert first.index("gamma") == first.index("beta") + 1  # order inside a file is kept
    assert docs(tmp_path) == first
    assert docs(tmp_path, seed=1) != first


# ---- Hugging Face ----------------------------------------------------------------------------


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    # The library reads these at import, which may already have happened.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "hfdata"
    folder.mkdir()
    for part in range(3):
        write_jsonl(
            folder / f"part{part}.jsonl", [{"text": f"doc {part}-{i}", "id": i} for i in range(4)]
        )
    return folder


def test_hf_local_folder(offline_hf):
    source = f"hf:{offline_hf}"
    first = docs(source)
    assert sorted(first) == sorted(f"doc {p}-{i}" for p in range(3) for i in range(4))
    assert docs(source) == first
    assert docs(source, seed=5) != first


def test_hf_errors(offline_hf, tmp_path):
    with pytest.raises(CorpusError, match=r"no column 'body'; its columns are \['text', 'id'\]"):
        docs(f"hf:{offline_hf}", text_field="body")
    with pytest.raises(CorpusError, match="split='validation'"):
        docs(f"hf:{offline_hf}", split="validation")
    with pytest.raises(CorpusError, match="cannot load dataset"):
        docs(f"hf:{tmp_path / 'missing'}")


# ---- errors ----------------------------------------------------------------------------------


def corpus_error(source: Path | str, **kw) -> str:
    with pytest.raises(CorpusError) as info:
        docs(source, **kw)
    return str(info.value)


def test_missing_path_and_bad_specs(tmp_path):
    missing = tmp_path / "nope.txt"
    assert corpus_error(missing) == f"corpus path does not exist: {missing}"
    with pytest.raises(CorpusError, match="corpus path does not exist"):
        CorpusSpec(str(missing)).validate()
    with pytest.raises(CorpusError, match="needs a dataset name"):
        CorpusSpec("hf:").validate()
    with pytest.raises(CorpusError, match="non-empty string"):
        CorpusSpec("").validate()
    with pytest.raises(CorpusError, match="text_field"):
        CorpusSpec("builtin", text_field="").validate()
    with pytest.raises(CorpusError, match="seed"):
        CorpusSpec("builtin", seed=True).validate()


def test_spec_json_round_trip():
    spec = CorpusSpec(
        "hf:owner/name", text_field="body", hf_config="en", split="validation", seed=3
    )
    assert CorpusSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert CorpusSpec.from_json({"source": "builtin"}) == CorpusSpec("builtin")
    with pytest.raises(CorpusError, match=r"unknown keys \['colour'\]"):
        CorpusSpec.from_json({"source": "builtin", "colour": "red"})
    with pytest.raises(CorpusError, match="no 'source'"):
        CorpusSpec.from_json({})


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x")
    assert ".jsonl, .parquet, .txt" in corpus_error(path)
    (tmp_path / "a.csv").rename(tmp_path / "b.md")
    msg = corpus_error(tmp_path)
    assert str(tmp_path) in msg and "no corpus files" in msg


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.parquet"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert corpus_error(tmp_path / name) == f"{tmp_path / name}: empty file (0 bytes)"


def test_whitespace_only_files(tmp_path):
    (tmp_path / "a.txt").write_text(" \n\t\n")
    assert corpus_error(tmp_path / "a.txt") == f"{tmp_path / 'a.txt'}: empty file (only whitespace)"
    (tmp_path / "b.jsonl").write_text("\n  \n")
    assert "b.jsonl: empty file (only blank lines)" in corpus_error(tmp_path / "b.jsonl")


def test_empty_file_inside_folder_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "sub" / "empty.jsonl").write_bytes(b"")
    assert corpus_error(tmp_path) == f"{tmp_path / 'sub' / 'empty.jsonl'}: empty file (0 bytes)"


def test_non_utf8(tmp_path):
    txt, jsonl = tmp_path / "a.txt", tmp_path / "b.jsonl"
    txt.write_bytes(b"caf\xe9 au lait")
    assert corpus_error(txt) == f"{txt}: not valid UTF-8 (byte offset 3 in the file)"
    first = b'{"text": "ok"}\n'
    jsonl.write_bytes(first + b'{"text": "caf\xe9"}\n')
    offset = len(first) + len(b'{"text": "caf')
    assert corpus_error(jsonl) == f"{jsonl}:2: not valid UTF-8 (byte offset {offset} in the file)"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", ":2: not valid JSON"),
        ("[1, 2]", ":2: expected a JSON object, got list"),
        ('{"body": "x", "id": 1}', ":2: object has no field 'text'; its keys are ['body', 'id']"),
        ('{"text": 7}', ":2: field 'text' is int, not a string"),
        ('{"text": null}', ":2: field 'text' is NoneType, not a string"),
    ],
)
def test_bad_jsonl_lines(tmp_path, line, expected):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    assert corpus_error(path).startswith(f"{path}{expected}")


def test_bad_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), path)
    assert corpus_error(path) == f"{path}: no column 'text'; its columns are ['body', 'n']"
    assert corpus_error(path, text_field="n") == f"{path}: column 'n' has type int64, not string"
    pq.write_table(pa.table({"text": ["x", None]}), path)
    assert corpus_error(path) == f"{path}: row 1: column 'text' is null"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    assert corpus_error(path) == f"{path}: empty file (no rows)"
    path.write_bytes(b"not parquet at all")
    assert corpus_error(path).startswith(f"{path}: not a readable parquet file")


# ---- built-in corpus -------------------------------------------------------------------------


def test_builtin_refs_are_deterministic_and_exclude_tests():
    refs = document_refs(0)
    assert refs == document_refs(0)
    assert refs != document_refs(1)
    assert sorted(refs, key=repr) == sorted(document_refs(1), key=repr)
    assert {r.kind for r in refs} == {"topic", "docstrings", "source"}
    paths = [Path(r.key) for r in refs if r.kind != "topic"]
    assert not any({"test", "tests", "site-packages", "idle_test"} & set(p.parts) for p in paths)
    assert all(p.stat().st_size <= 300_000 for p in paths)


def test_builtin_corpus_has_prose_and_code():
    sample = list(islice(builtin_corpus_documents(0), 150))
    assert sample == list(islice(builtin_corpus_documents(0), 150))
    assert sample[:20] != list(islice(builtin_corpus_documents(1), 20))
    prose = set(topics.values())
    assert any(doc in prose for doc in sample)

    def is_code(doc: str) -> bool:
        try:
            tree = ast.parse(doc)
        except SyntaxError:
            return False
        return any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree))

    assert any(is_code(doc) for doc in sample)


def test_builtin_corpus_packs_lazily():
    ctx = next(iter_contexts(CorpusSpec("builtin"), tiny_tokenizer(), 64))
    assert len(ctx.tokens) == 64
