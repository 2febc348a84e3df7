"""Offline backend for the Li et al. prompts: deterministic text from WordNet, NOT an LLM.

For tests and CPU demos. It reads each prompt back (`prompts.parse_prompt`) and answers what
it asks, in the format asked, so the pipeline drives it exactly as it drives vLLM:
  passages      sentences assembled from the noun's WordNet senses (glosses, examples,
                synonyms, hypernym chain, sister terms) under a genre opener;
  QA            cloze questions on a sentence of the passage(s);
  summary       `datagen.backends.extractive.summarize` (leading + salient sentences);
  rewrite/diff  a few words swapped; the differences listed from a word diff;
  logic         a WordNet hypernym chain: "a noun is a B" and "a B is a C";
  code          template Python (ast-parsed, never run) and template explanations.
Same request, same output: a hash of (seed, prompt) drives every choice.
"""
from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import json
import random
import re
from typing import Any, Sequence

from datagen.backends.base import Completion, Request
from datagen.backends.extractive import summarize
from datagen.chunking import sentences
from datagen.selfgen import prompts, wordnet

MODEL_NAME = "selfgen-offline (WordNet text, not an LLM)"

_OPENERS = {
    "an academic paper": "This paper examines {n} and the literature on it.",
    "a science fiction story": "In the year {y}, the crew of the survey ship found a {n}.",
    "a fairy tale": "Once upon a time there was a {n} that nobody understood.",
    "a news report": "Reporters this week looked again at {n}.",
    "a mystery story": "The detective knew the {n} was the key to the case.",
    "a letter to a friend": "Dear friend, I have been thinking about {n} lately.",
}


@functools.lru_cache(maxsize=2)
def _wordnet(path: str) -> tuple[dict, dict, dict]:
    syn = wordnet.read_synsets(path)
    by_name: dict[str, list[int]] = {}
    hypo: dict[int, list[int]] = {}
    for s in syn.values():
        for w in s.words:
            by_name.setdefault(wordnet.display(w).lower(), []).append(s.offset)
        for h in s.hypernyms:
            hypo.setdefault(h, []).append(s.offset)
    return syn, by_name, hypo


def _gloss(s: wordnet.Synset) -> tuple[str, list[str]]:
    """(definition, examples) of a synset's gloss."""
    parts = [p.strip() for p in s.gloss.split(";") if p.strip()]
    defs = [p for p in parts if not p.startswith('"')]
    exs = [p.strip('"') for p in parts if p.startswith('"')]
    return (defs[0] if defs else s.gloss), exs


def _name(s: wordnet.Synset) -> str:
    return wordnet.display(s.words[0])


class OfflineGenerator:
    """Deterministic `Generator` for every `datagen.selfgen.prompts` template."""

    model = MODEL_NAME

    def __init__(self, nouns_path: str = wordnet.DATA_NOUN):
        self.nouns_path = nouns_path

    def describe(self) -> dict[str, Any]:
        return {"model": MODEL_NAME, "kind": "offline", "note": "WordNet-based text and "
                "template code; deterministic; no sampling (temperature/top_p ignored)"}

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def _one(self, req: Request) -> Completion:
        prompt = "\n".join(c for role, c in req.messages if role == "user")
        parsed = prompts.parse_prompt(prompt)
        if parsed is None:
            return Completion("", "error", "offline backend: prompt matches no template in "
                                           "datagen.selfgen.prompts")
        name, f = parsed
        rng = random.Random(hashlib.sha256(f"{req.seed}\x00{prompt}".encode()).digest())
        text = getattr(self, "_" + name)(f, rng)
        return Completion(text if isinstance(text, str) else json.dumps(text), "stop")

    # ---- prose ------------------------------------------------------------------------
    def _senses(self, noun: str) -> list[wordnet.Synset]:
        syn, by_name, _ = _wordnet(self.nouns_path)
        return [syn[o] for o in by_name.get(noun.lower(), [])]

    def _text(self, noun: str, genre: str, words: int, rng: random.Random) -> str:
        syn, _, hypo = _wordnet(self.nouns_path)
        out = [_OPENERS.get(genre, "This is {g} about {n}.").format(
            n=noun, g=genre, y=rng.randint(2100, 3900))]
        senses = self._senses(noun) or [syn[min(syn)]]
        extra: list[str] = []
        for s in senses:
            d, exs = _gloss(s)
            out.append(f"In one sense, a {noun} is {d}.")
            others = [wordnet.display(w) for w in s.words if wordnet.display(w) != noun]
            if others:
                out.append(f"It is also called {', '.join(others[:4])}.")
            out += [f'One might say: "{e}".' for e in exs[:2]]
            for h in s.hypernyms[:1]:
                hd, _ = _gloss(syn[h])
                out.append(f"It is a kind of {_name(syn[h])}, that is, {hd}.")
                sisters = [_name(syn[o]) for o in hypo.get(h, []) if o != s.offset]
                if sisters:
                    k = min(4, len(sisters))
                    out.append(f"Related kinds of {_name(syn[h])} include "
                               f"{', '.join(rng.sample(sisters, k))}.")
                    for o in rng.sample(hypo[h], min(3, len(hypo[h]))):
                        od, _ = _gloss(syn[o])
                        extra.append(f"A {_name(syn[o])} is {od}.")
            below = [_name(syn[o]) for o in hypo.get(s.offset, [])]
            if below:
                out.append(f"Kinds of {noun} include {', '.join(below[:5])}.")
        out += extra
        text, n = [], 0
        for sent in out:  # stop near the word budget, at a sentence end
            if n >= words:
                break
            text.append(sent)
            n += len(sent.split())
        return " ".join(text)

    def _passage(self, f: dict, rng: random.Random) -> str:
        return self._text(f["noun"], f["genre"], int(f["words"]), rng)

    def _linked(self, f: dict, rng: random.Random) -> str:
        detail = self._detail(f["passage"], rng)
        body = self._text(f["noun"], f["genre"], int(f["words"]), rng)
        return f"{body} This account also mentions {detail}, as another text about " \
               f"{f['noun']} does."

    @staticmethod
    def _detail(text: str, rng: random.Random) -> str:
        words = [w.strip(".,;:!?\"'()") for w in text.split()]
        long = sorted({w for w in words if len(w) >= 6 and w.isalpha()})
        return rng.choice(long) if long else (words[0] if words else "it")

    @staticmethod
    def _cloze(text: str, rng: random.Random) -> tuple[str, str]:
        sents = [s for s in sentences(text) if len(s.split()) >= 6] or [text]
        words = rng.choice(sents).split()
        cut = max(2, min(len(words) - 2, len(words) // 2))
        return " ".join(words[:cut]), " ".join(words[cut:])

    def _single_qa(self, f: dict, rng: random.Random) -> dict:
        lead, tail = self._cloze(f["passage"], rng)
        return {"question": f'In the passage about {f["noun"]}, what comes right after '
                            f'"{lead}"?', "answer": tail}

    def _summary(self, f: dict, rng: random.Random) -> str:
        return summarize(f["passage"], int(f["words"]))

    def _rewrite(self, f: dict, rng: random.Random) -> str:
        words = f["passage"].split()
        spots = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        swaps = ["silver", "northern", "ancient", "seventeen", "Lisbon", "winter", "copper"]
        for i in rng.sample(spots, min(3, len(spots))):
            words[i] = rng.choice([s for s in swaps if s != words[i]])
        return " ".join(words)

    def _simdiff(self, f: dict, rng: random.Random) -> str:
        a, b = f["passage_a"].split(), f["passage_b"].split()
        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        diffs = [f'the first passage says "{" ".join(a[i1:i2])}" where the second says '
                 f'"{" ".join(b[j1:j2])}"' for op, i1, i2, j1, j2 in sm.get_opcodes()
                 if op != "equal"]
        same = sum(bl.size for bl in sm.get_matching_blocks())
        return (f"Similarities: both passages are about {f['noun']} and share {same} of "
                f"their words, in the same order. Differences: "
                + ("; ".join(diffs) if diffs else "none") + ".")

    def _multi_qa(self, f: dict, rng: random.Random) -> dict:
        words_b = set(w.strip(".,;:!?\"'()") for w in f["passage_b"].split())
        shared = sorted(w for w in set(w.strip(".,;:!?\"'()") for w in f["passage_a"].split())
                        if w in words_b and len(w) >= 6 and w.isalpha())
        detail = rng.choice(shared) if shared else f["noun"]
        return {"question": f"Which word of at least six letters do both passages about "
                            f"{f['noun']} use, among others?", "answer": detail}

    def _logic_facts(self, f: dict, rng: random.Random) -> dict:
        syn, _, _ = _wordnet(self.nouns_path)
        chain, s = [], (self._senses(f["noun"]) or [None])[0]
        while s is not None and s.hypernyms and len(chain) < 2:
            s = syn[s.hypernyms[0]]
            chain.append(_name(s))
        b, c = (chain + ["entity", "thing"])[:2] if len(chain) < 2 else chain
        n = f["noun"]
        return {"a": f"something is a {n}", "b": f"it is a {b}", "c": f"it is a {c}",
                "fact_1": f"If something is a {n}, then it is a {b}.",
                "fact_2": f"If something is a {b}, then it is a {c}."}

    def _logic_qa(self, f: dict, rng: random.Random) -> dict:
        return {"question": f'Given that {f["a"]}, does it follow that {f["c"]}?',
                "answer": f'Yes: {f["fact_1"]} {f["fact_2"]}'}

    # ---- code -------------------------------------------------------------------------
    @staticmethod
    def _names(code: str) -> set[str]:
        try:
            tree = ast.parse(code)  # parsed only, never run
        except SyntaxError:
            return set()
        return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
                | {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)})

    @staticmethod
    def _ident(noun: str) -> str:
        s = re.sub(r"\W+", "_", noun.lower()).strip("_") or "item"
        return s if s[0].isalpha() else "n_" + s

    def _fresh(self, base: str, used: set[str]) -> str:
        k = 1
        while f"{base}_{k}" in used:
            k += 1
        used.add(f"{base}_{k}")
        return f"{base}_{k}"

    def _code_vars(self, f: dict, rng: random.Random) -> str:
        used = self._names(f["code"])
        base, lines, made = self._ident(f["noun"]), [], []
        for _ in range(int(f["n"])):
            v = self._fresh(base, used)
            dep = rng.choice(made) if made and rng.random() < 0.5 else None
            lines.append(f"{v} = {dep} + {rng.randint(1, 9)}" if dep else
                         f"{v} = {rng.randint(1, 100)}")
            made.append(v)
        return "\n".join(lines)

    def _code_func(self, f: dict, rng: random.Random) -> str:
        used = self._names(f["code"])
        name = self._fresh(self._ident(f["noun"]) + "_combine", used)
        params = [f"x{i}" for i in range(int(f["k"]))]
        op = rng.choice(["+", "*", "-"])
        return f"def {name}({', '.join(params)}):\n    return {f' {op} '.join(params)}"

    def _code_call(self, f: dict, rng: random.Random) -> str:
        used = self._names(f["code"])
        return f"{self._fresh(f['func'] + '_out', used)} = {f['func']}({f['args']})"

    def _code_explain(self, f: dict, rng: random.Random) -> str:
        for node in ast.walk(ast.parse(f["snippet"])):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == f["var"]
                                                    for t in node.targets):
                return f"The variable {f['var']} is initialized to {ast.unparse(node.value)}."
        return f"The variable {f['var']} is initialized in the snippet."

    def _code_ask5(self, f: dict, rng: random.Random) -> dict:
        fn = f["func"]
        return {"questions": [f"What does {fn} return?", f"How many parameters does {fn} "
                              f"take?", f"What are the parameter names of {fn}?",
                              f"Does {fn} have side effects?", f"What is {fn} named?"]}

    def _code_answer(self, f: dict, rng: random.Random) -> str:
        node = next(n for n in ast.walk(ast.parse(f["snippet"]))
                    if isinstance(n, ast.FunctionDef))
        ret = next((ast.unparse(n.value) for n in ast.walk(node)
                    if isinstance(n, ast.Return) and n.value is not None), "None")
        params = [a.arg for a in node.args.args]
        return (f"{node.name} takes {len(params)} parameter(s) ({', '.join(params)}), "
                f"has no side effects and returns {ret}.")

    def _code_summary(self, f: dict, rng: random.Random) -> str:
        return "Summary: " + self._code_answer(f, rng)
