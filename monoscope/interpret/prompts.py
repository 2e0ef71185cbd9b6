"""Versioned prompts: the package's prompts/<version>.txt files, filled with a feature's text.

A prompt file holds a system and a user message, each after a header line `=== system ===` /
`=== user ===`; `$name` (or `${name}`) is a slot filled by `fill` and a literal dollar is `$$`
(Python's string.Template, so JSON braces in a prompt need no escaping). The file's name is its
version, stored with every explanation and score: change a prompt by adding a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template

ROLES = ("system", "user")
_HEADER = re.compile(r"^=== (\w+) ===[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    version: str
    system: Template
    user: Template

    def fill(self, **values: object) -> tuple[tuple[str, str], ...]:
        """The (role, content) messages with every slot filled; a missing slot is a KeyError."""
        text = {k: str(v) for k, v in values.items()}
        return (
            ("system", self.system.substitute(text).strip()),
            ("user", self.user.substitute(text).strip()),
        )


def available() -> list[str]:
    """Versions shipped with the package, e.g. ['detection-v1', 'explain-v1', ...]."""
    folder = resources.files("monoscope.interpret") / "prompts"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


@cache
def load_prompt(version: str) -> Prompt:
    """The prompt of that version; an unknown version names the ones there are."""
    path = resources.files("monoscope.interpret") / "prompts" / f"{version}.txt"
    if not path.is_file():
        raise ValueError(f"no prompt {version!r}; available: {', '.join(available())}")
    return parse_prompt(version, path.read_text(encoding="utf-8"))


def parse_prompt(version: str, text: str) -> Prompt:
    """A prompt file's text split at its headers into the system and user templates."""
    pieces = _HEADER.split(text)
    sections = dict(zip(pieces[1::2], pieces[2::2], strict=True))
    if sorted(sections) != sorted(ROLES) or pieces[0].strip():
        raise ValueError(
            f"prompt {version!r} must be exactly a '=== system ===' and a '=== user ===' section"
        )
    return Prompt(version, Template(sections["system"]), Template(sections["user"]))
