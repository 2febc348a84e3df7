"""RULER variable tracking (vt): chains of `VAR X = ...` hidden in repeated noise.

Mirrors the reference's `variable_tracking.py` at 230fddc: a one-shot example generated at
length 500 (3-letter names, the model template stripped and the word before the answer prefix
dropped, as the reference's string surgery does), re-randomised per sample, put after the
model template's opening; the example's tokens count against the budget.
"""
from __future__ import annotations

import string

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options, Rng

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


class VariableTracking(Family):
    tokens_to_generate = constants.FAMILIES["variable_tracking"]["tokens_to_generate"]

    def __init__(self, name: str, max_len: int, opts: Options, *, num_chains: int = 1,
                 num_hops: int = 4, is_icl: bool = False, incremental: int = 10,
                 example_tokens: int = 0):
        super().__init__(name, max_len, opts)
        self.num_chains, self.num_hops, self.is_icl = num_chains, num_hops, is_icl
        fam = constants.FAMILIES["variable_tracking"]
        self.task_template = fam["template"]
        self.answer_prefix = fam["answer_prefix"].replace("assgined", "assigned") \
            if opts.fix_typos else fam["answer_prefix"]
        template = constants.full_template("variable_tracking", opts.chat_template,
                                           opts.fix_typos)
        if is_icl and template != self.task_template + self.answer_prefix:
            cut = template.index(self.task_template[:20])
            cut_ans = template.index(self.answer_prefix[:10])
            template = " ".join(template[cut:cut_ans].split()[:-1]) + template[cut_ans:]
        self.template = template
        self.example = None  # the one-shot example text ("input outputs\n\n")
        self.search = fit.SizeSearch(incremental, max_len,
                                     self.tokens_to_generate + example_tokens)

    def _chains(self, rng: Rng):
        k = 3 if self.is_icl else 5
        hops = min(10, self.num_hops) if self.is_icl else self.num_hops
        need = (hops + 1) * self.num_chains
        names = ["".join(rng.py.choices(string.ascii_uppercase, k=k)) for _ in range(need)]
        while len(set(names)) < need:
            names.append("".join(rng.py.choices(string.ascii_uppercase, k=k)))
        all_vars, chains = [], []
        for i in range(0, len(names), hops + 1):
            v = names[i:i + hops + 1]
            all_vars.append(v)
            chain = [f"VAR {v[0]} = {rng.np.randint(10000, 99999)}"]
            chain += [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(hops)]
            chains.append(chain)
        return all_vars, chains

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        all_vars, chains = self._chains(rng)
        sentences = [NOISE] * n
        if len(sentences) <= len(chains[0]):  # too little noise: split it into sentences
            sentences = [x + "." if x.strip() else x for s in sentences for x in s.split(".")]
            if len(sentences) <= len(chains[0]):
                chains = [c[:len(sentences) - 1] for c in chains]
        for chain in chains:
            spots = sorted(rng.py.sample(range(len(sentences)), len(chain)))
            for j, spot in enumerate(spots):
                sentences.insert(spot + j, chain[j])
        context = " ".join(sentences).replace(". \n", ".\n")
        value = chains[0][0].split("=")[-1].strip()
        hops = min(10, self.num_hops) if self.is_icl else self.num_hops
        return self.template.format(context=context, query=value, num_v=hops + 1), all_vars[0]

    def search_text(self, text: str, answers: list[str]) -> str:
        return text + f" {answers}"

    def before_samples(self, rng: Rng, counter) -> None:
        """The reference builds its one-shot example first (length 500, increment 5)."""
        if self.is_icl:
            return
        icl = VariableTracking(self.name, 500, self.opts, num_chains=self.num_chains,
                               num_hops=self.num_hops, is_icl=True, incremental=5)
        # The reference draws the example from the same random streams as the samples.
        used = max(icl.find_size(counter), icl.search.incremental)
        while True:
            text, answers = icl.render(used, rng)
            if counter.exact(text) + icl.search.reserve <= icl.max_len or used == 1:
                break
            # The reference would retry forever at the smallest size when a (small-vocabulary)
            # tokenizer cannot fit 5 noises in 500 tokens; we shrink to a single noise instead.
            used = used - icl.search.incremental if used > icl.search.incremental else 1
        self.example = text + " " + " ".join(answers) + "\n\n"
        ex_tokens = len(counter.tok.encode(self.example))
        self.search = fit.SizeSearch(self.search.incremental, self.max_len,
                                     self.tokens_to_generate + ex_tokens)

    def find_size(self, counter, method: str = "fast") -> int:
        if not self.is_icl and self.example is None:
            self.before_samples(Rng.from_seed(self.opts.seed), counter)
        return super().find_size(counter, method)

    def finish_sample(self, text: str, rng: Rng) -> str:
        if self.is_icl:
            return text
        cut = text.index(self.task_template[:20])
        return text[:cut] + self._randomize(self.example, rng) + "\n\n" + text[cut:]

    def _randomize(self, example: str, rng: Rng) -> str:
        """New random names for the example's answer variables, replaced everywhere in it."""
        tail = self.answer_prefix[-10:]
        for item in example[example.index(tail) + 10:].strip().split():
            new = "".join(rng.py.choices(string.ascii_uppercase, k=len(item)))
            example = example.replace(item, new)
        return example
