"""WordNet 3.0 nouns, read straight from Debian `wordnet-base`'s `data.noun` (no nltk).

Li et al. 2025 seed their passage corpus with "119,034 nouns in the English language mined
from WordNet": the distinct, case-sensitive lemma names over all noun synsets (82,115
synsets, 146,347 word-sense pairs; REFERENCE_NOTES_WAVE2 section 6 derives the count and
the list's sha256). Names keep WordNet's `_` for spaces; `display` turns them into the text
a prompt shows.

`data.noun` lines (wndb(5WN)): `offset lex_filenum ss_type w_cnt word lex_id [word lex_id
...] p_cnt [ptr_symbol offset pos source/target ...] | gloss`, w_cnt in hex, p_cnt in
decimal; the licence header lines start with two spaces. The synset graph (glosses and
hypernyms) also feeds the offline backend, which builds text from it instead of an LLM.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re

DATA_NOUN = "/usr/share/wordnet/data.noun"
# The sha256 of the code-point-sorted names joined by "\n" with a trailing "\n", for WordNet
# 3.0 as Debian ships it (REFERENCE_NOTES_WAVE2 section 6); `load_nouns` checks it.
NOUNS_COUNT = 119_034
NOUNS_SHA256 = "2fdd95a70945bb840bdda6f4e5a6863469d9e8ac70e471ed56071a6321c34aa8"


class WordNetError(FileNotFoundError):
    """WordNet's noun database is missing or unreadable; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Synset:
    offset: int
    words: tuple[str, ...]          # lemma names, WordNet spelling (`_` for spaces)
    hypernyms: tuple[int, ...]      # offsets of `@` and `@i` (instance) hypernyms
    gloss: str                      # definition and examples, as WordNet prints them


def _missing(path: str) -> WordNetError:
    return WordNetError(
        f"WordNet noun database {path} not found. Install the Debian package that ships it: "
        f"`sudo apt-get install wordnet-base` (setup.sh does this), or pass the path of a "
        f"WordNet 3.0 data.noun file")


_HYPERNYM = re.compile(r"(?<!\S)@i? (\d{8}) n ")


def parse_line(line: str) -> Synset:
    """One synset line of data.noun (see the module docstring for the fields)."""
    head, _, gloss = line.partition(" | ")
    offset, _, _, w_hex, rest = head.split(" ", 4)
    w_cnt = int(w_hex, 16)
    fields = rest.split(" ", 2 * w_cnt)  # word lex_id ... then p_cnt and the pointers
    pointers = fields[-1]
    int(pointers.split(" ", 1)[0])  # p_cnt: a malformed line fails here
    hyper = tuple(int(x) for x in _HYPERNYM.findall(pointers))
    return Synset(int(offset), tuple(fields[0:2 * w_cnt:2]), hyper, gloss.strip())


@functools.lru_cache(maxsize=2)
def read_synsets(path: str = DATA_NOUN) -> dict[int, Synset]:
    """Every noun synset by offset (parsed once per process; treat it as read-only); raises
    WordNetError naming the package when the file is missing."""
    if not os.path.isfile(path):
        raise _missing(path)
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                s = parse_line(line)
                out[s.offset] = s
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise WordNetError(f"{path} is not a WordNet data.noun file ({type(e).__name__}: "
                           f"{e}); reinstall `wordnet-base`") from e
    if not out:
        raise WordNetError(f"{path} holds no noun synsets; reinstall `wordnet-base`")
    return out


def nouns_from_synsets(synsets: dict[int, Synset]) -> list[str]:
    """Distinct case-sensitive lemma names, sorted by code point."""
    return sorted({w for s in synsets.values() for w in s.words})


@functools.lru_cache(maxsize=2)
def load_nouns(path: str = DATA_NOUN) -> tuple[str, ...]:
    """The noun list Li et al. start from (119,034 names for WordNet 3.0)."""
    return tuple(nouns_from_synsets(read_synsets(path)))


def nouns_sha256(nouns) -> str:
    """The list's fingerprint: sha256 of the names joined by "\\n", with a trailing "\\n"."""
    return hashlib.sha256(("\n".join(nouns) + "\n").encode()).hexdigest()


def display(name: str) -> str:
    """How a prompt shows a lemma name: WordNet's `_` becomes a space."""
    return name.replace("_", " ")
