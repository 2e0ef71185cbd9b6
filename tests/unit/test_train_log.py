"""train_log.jsonl after a crash (issue 22, point 7): a last line cut short is debris a resume
drops; a damaged line before it is an error naming the file and the line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from monoscope.artifacts import CorruptFileError
from monoscope.cli import main
from monoscope.train import TrainConfig, read_log, run, trainer

ROWS = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]


def write_log(path, rows, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


@pytest.mark.parametrize(
    "tail", [b'{"step": 4, "loss": 0.2', b"\x00\x00\x00\x00", b'{"step": 4, "lo\xe2\x82']
)
def test_a_last_line_cut_short_is_dropped(tmp_path, caplog, tail):
    write_log(tmp_path / "train_log.jsonl", ROWS, tail)
    with caplog.at_level(logging.WARNING):
        assert read_log(tmp_path) == ROWS
    assert "dropped its unfinished last line" in caplog.text


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b'{"step": 2, "lo', r"not valid JSON \(Unterminated string"),
        (b"[2, 0.5]", "not a JSON object with an integer step"),
        (b'{"loss": 0.5}', "not a JSON object with an integer step"),
    ],
)
def test_a_damaged_line_before_the_last_is_named(tmp_path, bad, problem):
    path = tmp_path / "train_log.jsonl"
    write_log(path, ROWS[:1], bad + b"\n" + json.dumps(ROWS[2]).encode() + b"\n")
    with pytest.raises(CorruptFileError, match=rf"{path} is damaged: line 2 is {problem}"):
        read_log(tmp_path)


def tiny_run(tmp_path) -> TrainConfig:
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(256 * 8, 16)).astype(np.float32))
    return TrainConfig(
        acts=str(acts),
        out=str(tmp_path / "sae"),
        arch="topk",
        features="2x",
        k=4,
        batch_size=256,
        tokens=256 * 8,
        checkpoint_every=4,
        log_every=1,
        progress=False,
    )


class Killed(Exception):
    pass


def killed_at(step: int, config: TrainConfig, monkeypatch) -> None:
    """Run `config` and kill it as it reaches `step` (counting from 0)."""
    real_lr = trainer.learning_rate

    def dying_lr(at, *args):
        if at == step:
            raise Killed
        return real_lr(at, *args)

    with monkeypatch.context() as m:
        m.setattr(trainer, "learning_rate", dying_lr)
        with pytest.raises(Killed):
            run(config)


def test_a_resume_after_a_torn_last_line_logs_each_step_once(tmp_path, monkeypatch):
    config = tiny_run(tmp_path)
    killed_at(6, config, monkeypatch)  # after the checkpoint of step 4 and the log of step 6
    path = tmp_path / "sae" / "train_log.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"step": 7, "tokens": 17')  # the write the kill cut short
    run(config)
    assert [row["step"] for row in read_log(tmp_path / "sae")] == list(range(1, 9))


def test_a_resume_refuses_a_damaged_log_in_one_line(tmp_path, monkeypatch, capsys):
    config = tiny_run(tmp_path)
    killed_at(6, config, monkeypatch)
    path = tmp_path / "sae" / "train_log.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]
    path.write_text("\n".join(lines) + "\n")
    args = ["train", "--acts", config.acts, "--out", config.out, "--arch", "topk"]
    args += ["--features", "2x", "--k", "4", "--batch-size", "256", "--tokens", "2048"]
    args += ["--checkpoint-every", "4", "--log-every", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{path} is damaged: line 3 is not valid JSON" in err
