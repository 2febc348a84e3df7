"""RULER QA (qa_1: SQuAD v2 dev, qa_2: HotpotQA dev distractor): the gold paragraph(s) among
distractor documents, numbered `Document i:`.

Mirrors the reference's `qa.py` (2024): answerable SQuAD questions (distractors first from the
same article), HotpotQA's 10 paragraphs as `title\\n` + sentences; unique documents sorted;
sample i asks question i; one fixed shuffle permutation (Random(seed)). The datasets are
user-supplied files; without them the tasks are reported as not run.
"""
from __future__ import annotations

import json
import random

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options, Rng

DOCUMENT = "Document {i}:\n{document}"


def read_squad(path: str):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    doc_id = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        article = [doc_id[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    own = doc_id[p["context"]]
                    qas.append({"query": qa["question"],
                                "outputs": [a["text"] for a in qa["answers"]],
                                "context": [own],
                                "more_context": [i for i in article if i != own]})
    return qas, docs


def read_hotpotqa(path: str):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    doc_id = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [doc_id[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return qas, docs


class QA(Family):
    tokens_to_generate = constants.FAMILIES["qa"]["tokens_to_generate"]

    def __init__(self, name: str, max_len: int, opts: Options, *, dataset: str,
                 path: str | None = None, loaded=None):
        super().__init__(name, max_len, opts)
        if loaded is None:
            if not path:
                raise FileNotFoundError(f"task {name} needs the {dataset} dev file")
            loaded = (read_squad if dataset == "squad" else read_hotpotqa)(path)
        self.qas, self.docs = loaded
        self.template = constants.full_template("qa", opts.chat_template, opts.fix_typos)
        self.search = fit.SizeSearch(10, max_len, self.tokens_to_generate, len(self.docs),
                                     "after_increment")

    def render_question(self, index: int, n: int, rng: Rng) -> tuple[str, list[str]]:
        if index >= len(self.qas):
            raise ValueError(f"task {self.name}: sample {index} but the file has only "
                             f"{len(self.qas)} questions; use fewer --samples")
        qa = self.qas[index]
        gold, more = qa["context"], qa.get("more_context", [])
        if n < len(self.docs):
            if n - len(gold) > len(more):
                taken = set(gold + more)
                rest = [i for i in range(len(self.docs)) if i not in taken]
                ids = gold + more + rng.py.sample(rest, max(0, n - len(gold) - len(more)))
            else:
                ids = gold + rng.py.sample(more, n - len(gold))
            chosen = [self.docs[i] for i in ids]
        else:
            chosen = list(self.docs)
        random.Random(self.opts.seed).shuffle(chosen)
        context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(chosen))
        return self.template.format(context=context, query=qa["query"]), qa["outputs"]

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        return self.render_question(0, n, rng)  # the reference searches on question 0

    def render_sample(self, n: int, rng: Rng, index: int) -> tuple[str, list[str]]:
        return self.render_question(index, n, rng)

    def search_text(self, text: str, answers: list[str]) -> str:
        return text + f" {answers}"
