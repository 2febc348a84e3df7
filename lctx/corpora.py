"""Offline real text: the King James Bible from Debian's `bible-kjv` package.

Used as the default haystack (evals), corpus (datagen, the demo) and tokenizer training text
(tests). Install with `apt-get install -y bible-kjv bible-kjv-text` (the README set-up does).
JAX-free.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

_REF = re.compile(r"^(\S+?)(\d+):(\d+)\s+(.*)$")


@functools.lru_cache(maxsize=1)
def kjv_verses() -> tuple[tuple[str, int, int, str], ...]:
    """All 31,102 verses as (book abbreviation, chapter, verse, text)."""
    if shutil.which("bible") is None:
        raise FileNotFoundError(
            "the KJV corpus needs Debian's bible-kjv package: "
            "apt-get install -y bible-kjv bible-kjv-text")
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    verses = []
    for line in out.splitlines():
        m = _REF.match(line.strip())
        if m:
            verses.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()))
    if len(verses) < 31000:
        raise RuntimeError(f"bible printed {len(verses)} verses; expected 31,102")
    return tuple(verses)


def kjv_text() -> str:
    """The whole KJV as plain text, one verse a line, references stripped (~4.1 MB)."""
    return "\n".join(v[3] for v in kjv_verses())


def kjv_books() -> list[tuple[str, str]]:
    """The 66 books as (abbreviation, text) documents in canonical order."""
    books: dict[str, list[str]] = {}
    for book, _, _, text in kjv_verses():
        books.setdefault(book, []).append(text)
    return [(b, " ".join(lines)) for b, lines in books.items()]
