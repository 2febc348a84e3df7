"""The six tasks of Li et al. Section 2.1: what each sample's generator calls make, and how
its input and output read once its passages are numbered.

Each task is a coroutine (see `calls.Runner`) that returns `Content`: the relevant blocks
(passages the answer needs, or the program), the corpus passages that must not reappear as
distractors, and `finish(numbers)`, which writes the prompt, question and answer for the
passage numbers the blocks finally get (the summarization prompt names them). The length
(distractors) is `assemble.py`'s business.

  single_qa      p_i from the corpus; one call for a highly specific (q, a) about it.
  summarization  k corpus passages; one summary call each; the prompt names each passage's
                 number and noun; the output is the summaries in that order.
  simdiff        r1 = p_i, r2 = a rewrite differing in a few key details, then the
                 similarities and differences d (kept in that order, so "first/second"
                 in d stays true).
  multi_qa       s1 = p_i, s2 = a passage linked to it by key details, then a (q, a)
                 needing both.
  logic          facts "A implies B" and "B implies C", then a (q, a) about A and C.
  code           a program by the random policy (code.py), then one instruction: explain a
                 variable's initialization, one of five generated questions about a
                 function answered in context, a function summary (generator), or which
                 function produced a variable / the variables that went into it (derived
                 from the record).
Reading Li et al.: r1 and s1 are corpus passages (the corpus is made of passages about
each noun, so the first of the pair is already there); the rest is generated per sample.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable

from datagen.qa import stable_seed
from datagen.selfgen import calls, code, prompts, wordnet
from datagen.selfgen.config import SelfGenConfig


@dataclasses.dataclass
class Block:
    text: str
    noun: str
    role: str                   # answer, summarized, first, second, fact_1, fact_2, program
    numbered: bool = True       # "Passage k:" (False: the unnumbered "Code:" block)


@dataclasses.dataclass
class Content:
    task: str
    nouns: list[str]
    blocks: list[Block]
    ordered: bool               # the blocks keep their relative order in the sample
    exclude: set[int]           # corpus passages that are not distractors for this sample
    finish: Callable[[list[int | None]], tuple[str, str, dict[str, Any]]]
    meta: dict[str, Any]
    smaller: Callable[[], "Content | None"] | None = None  # the same sample, less content


@dataclasses.dataclass
class Skip:
    reason: str


def _fail(what: str, out: calls.Outcome) -> Skip:
    return Skip(f"{what} failed after {out.attempts} attempt(s): {out.errors[-1][:120]}")


def _qa_tail(q: str) -> str:
    return prompts.QA_PROMPT + "\n\n" + q


def single_qa(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    i = rng.randrange(len(corpus))
    p = corpus.get([i])[0]
    noun = wordnet.display(p["noun"])
    out = (yield [calls.Call("single_qa", prompts.render(prompts.SINGLE_QA, noun=noun,
                                                         passage=p["text"]),
                             stable_seed(seed, "qa"), cfg.max_tokens_qa, calls.qa,
                             prompts.qa_schema(cfg.json_max_chars))])[0]
    if not out.ok:
        return _fail("QA generation", out)
    q, a = out.value["question"], out.value["answer"]
    return Content("single_qa", [p["noun"]], [Block(p["text"], p["noun"], "answer")], True,
                   {i}, lambda nums: (_qa_tail(q), a, {"answer_passage": nums[0]}),
                   {"question": q, "corpus_index": i})


def summarization(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    k = rng.randint(*cfg.summary_passages)
    idx = rng.sample(range(len(corpus)), min(k, len(corpus)))
    ps = corpus.get(idx)
    outs = yield [calls.Call("summary", prompts.render(prompts.SUMMARY, words=cfg.summary_words,
                                                       noun=wordnet.display(p["noun"]),
                                                       passage=p["text"]),
                             stable_seed(seed, "summary", j), cfg.max_tokens_qa,
                             calls.prose(cfg.summary_words))
                  for j, p in enumerate(ps)]
    good = [(i, p, o.value) for i, p, o in zip(idx, ps, outs) if o.ok]
    if not good:
        return _fail("every summary", outs[0])

    def content(items) -> Content:
        def finish(nums):
            order = sorted(range(len(items)), key=lambda j: nums[j])
            req = prompts.summary_request([(nums[j], wordnet.display(items[j][1]["noun"]))
                                           for j in order])
            return req, "\n\n".join(items[j][2] for j in order), {
                "summarized": [{"passage": nums[j], "noun": items[j][1]["noun"]}
                               for j in order]}
        return Content("summarization", [p["noun"] for _, p, _ in items],
                       [Block(p["text"], p["noun"], "summarized") for _, p, _ in items],
                       False, set(idx), finish,
                       {"corpus_indices": [i for i, _, _ in items],
                        "summaries_failed": len(idx) - len(good)},
                       (lambda: content(items[:-1])) if len(items) > 1 else None)
    return content(good)


def simdiff(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    i = rng.randrange(len(corpus))
    p = corpus.get([i])[0]
    noun = wordnet.display(p["noun"])
    out = (yield [calls.Call("rewrite", prompts.render(prompts.REWRITE, noun=noun,
                                                       passage=p["text"]),
                             stable_seed(seed, "rewrite"), cfg.max_tokens_passage,
                             calls.prose(2 * cfg.passage_words, cfg.min_passage_words))])[0]
    if not out.ok:
        return _fail("rewrite", out)
    if out.value == p["text"]:
        return Skip("the rewrite is identical to the passage")
    r2 = out.value
    d = (yield [calls.Call("simdiff", prompts.render(prompts.SIMDIFF, noun=noun,
                                                     passage_a=p["text"], passage_b=r2),
                           stable_seed(seed, "simdiff"), cfg.max_tokens_qa,
                           calls.prose(4 * cfg.summary_words))])[0]
    if not d.ok:
        return _fail("similarities and differences", d)
    tail = prompts.render(prompts.SIMDIFF_PROMPT, noun=noun)
    return Content("simdiff", [p["noun"]], [Block(p["text"], p["noun"], "first"),
                                            Block(r2, p["noun"], "second")], True, {i},
                   lambda nums: (tail, d.value, {"passages": list(nums)}),
                   {"corpus_index": i})


def multi_qa(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    i = rng.randrange(len(corpus))
    p = corpus.get([i])[0]
    noun = wordnet.display(p["noun"])
    genre = cfg.genres[rng.randrange(len(cfg.genres))]
    out = (yield [calls.Call("linked", prompts.render(prompts.LINKED, noun=noun, genre=genre,
                                                      words=cfg.passage_words,
                                                      passage=p["text"]),
                             stable_seed(seed, "linked"), cfg.max_tokens_passage,
                             calls.prose(2 * cfg.passage_words, cfg.min_passage_words))])[0]
    if not out.ok:
        return _fail("linked passage", out)
    s2 = out.value
    qa = (yield [calls.Call("multi_qa", prompts.render(prompts.MULTI_QA, noun=noun,
                                                       passage_a=p["text"], passage_b=s2),
                            stable_seed(seed, "qa"), cfg.max_tokens_qa, calls.qa,
                            prompts.qa_schema(cfg.json_max_chars))])[0]
    if not qa.ok:
        return _fail("two-passage QA", qa)
    q, a = qa.value["question"], qa.value["answer"]
    return Content("multi_qa", [p["noun"]], [Block(p["text"], p["noun"], "first"),
                                             Block(s2, p["noun"], "second")], True, {i},
                   lambda nums: (_qa_tail(q), a, {"passages": list(nums)}),
                   {"question": q, "corpus_index": i, "linked_genre": genre})


def logic(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    i = rng.randrange(len(corpus))
    noun = corpus.nouns[i]
    facts = (yield [calls.Call("logic_facts", prompts.render(prompts.LOGIC_FACTS,
                                                             noun=wordnet.display(noun)),
                               stable_seed(seed, "facts"), cfg.max_tokens_qa,
                               calls.json_fields(("a", "b", "c", "fact_1", "fact_2")),
                               prompts.logic_schema(cfg.json_max_chars))])[0]
    if not facts.ok:
        return _fail("facts", facts)
    f = facts.value
    qa = (yield [calls.Call("logic_qa", prompts.render(prompts.LOGIC_QA, **{
        k: f[k] for k in ("fact_1", "fact_2", "a", "c")}), stable_seed(seed, "qa"),
        cfg.max_tokens_qa, calls.qa, prompts.qa_schema(cfg.json_max_chars))])[0]
    if not qa.ok:
        return _fail("logic QA", qa)
    q, a = qa.value["question"], qa.value["answer"]
    return Content("logic", [noun], [Block(f["fact_1"], noun, "fact_1"),
                                     Block(f["fact_2"], noun, "fact_2")], True, set(),
                   lambda nums: (_qa_tail(q), a, {"fact_passages": list(nums)}),
                   {"question": q, "a": f["a"], "b": f["b"], "c": f["c"]})


QUESTION_KINDS = ("explain_variable", "function_qa", "summarize_function",
                  "which_function", "list_variables")


def code_task(corpus, rng: random.Random, seed: int, cfg: SelfGenConfig):
    noun = corpus.nouns[rng.randrange(len(corpus))]
    prog = yield from code.write_program(noun, stable_seed(seed, "program"), cfg)
    prov = code.provenance(prog.steps)
    kind = rng.choice(QUESTION_KINDS)
    made = [v for v, p in prov.items() if p["function"]]
    if not made:
        return Skip("the program has no function call (code_fallback is off and the "
                    "generator failed the function or call steps)")
    qmeta: dict[str, Any] = {"question_kind": kind}
    vars_steps = [s for s in prog.steps if s["kind"] == "vars"]
    funcs = [s for s in prog.steps if s["kind"] == "func"]
    question = answer = None
    if (kind == "explain_variable" and not vars_steps) or (
            kind in ("function_qa", "summarize_function") and not funcs):
        kind = qmeta["question_kind"] = "which_function"  # code_fallback off, no such step
    if kind == "explain_variable":
        step = rng.choice(vars_steps)
        v = rng.choice(step["defines"])
        out = (yield [calls.Call("code_explain", prompts.render(
            prompts.CODE_EXPLAIN_GEN, snippet=step["code"], var=v), stable_seed(seed, "q"),
            cfg.max_tokens_qa, calls.prose(4 * cfg.summary_words))])[0]
        if out.ok:
            question, answer = prompts.render(prompts.CODE_EXPLAIN_VAR, var=v), out.value
            qmeta.update(variable=v, snippet=step["code"])
    elif kind in ("function_qa", "summarize_function"):
        step = rng.choice(funcs)
        f, snip = step["func"], step["code"]
        qmeta.update(function=f, snippet=snip)
        if kind == "summarize_function":
            out = (yield [calls.Call("code_summary", prompts.render(
                prompts.CODE_SUMMARY_GEN, snippet=snip, func=f), stable_seed(seed, "q"),
                cfg.max_tokens_qa, calls.prose(4 * cfg.summary_words))])[0]
            if out.ok:
                question = prompts.render(prompts.CODE_SUMMARIZE, func=f)
                answer = out.value
        else:
            asked = (yield [calls.Call("code_ask5", prompts.render(
                prompts.CODE_ASK5_GEN, snippet=snip, func=f), stable_seed(seed, "ask5"),
                cfg.max_tokens_qa, calls.json_fields(array="questions", items=5),
                prompts.ask5_schema(cfg.json_max_chars))])[0]
            if asked.ok:
                qs = asked.value["questions"]
                j = rng.randrange(len(qs))
                out = (yield [calls.Call("code_answer", prompts.render(
                    prompts.CODE_ANSWER_GEN, snippet=snip, func=f, question=qs[j]),
                    stable_seed(seed, "answer", j), cfg.max_tokens_qa,
                    calls.prose(4 * cfg.summary_words))])[0]
                qmeta["generated_questions"] = qs
                if out.ok:
                    question, answer = qs[j], out.value
    if question is None:  # mechanical kinds, and the fallback when the generator failed
        if kind not in ("which_function", "list_variables"):
            qmeta["fallback_from"] = kind
            kind = qmeta["question_kind"] = rng.choice(("which_function", "list_variables"))
        pool = made if kind == "which_function" else (
            [v for v, p in prov.items() if p["participants"]] or made)
        v = rng.choice(pool)
        qmeta["variable"] = v
        if kind == "which_function":
            question = prompts.render(prompts.CODE_WHICH_FUNCTION, var=v)
            answer = prov[v]["function"]
        else:
            question = prompts.render(prompts.CODE_LIST_VARIABLES, var=v)
            answer = ", ".join(prov[v]["participants"])
    program = prog.code()
    block = Block(f"```python\n{program}\n```", noun, "program", numbered=False)
    meta = {"steps": prog.steps, "provenance": prov, **qmeta}
    return Content("code", [noun], [block], True, set(),
                   lambda nums: (question, answer, {}), meta)


TASK_FNS = {"single_qa": single_qa, "summarization": summarization, "simdiff": simdiff,
            "multi_qa": multi_qa, "logic": logic, "code": code_task}
