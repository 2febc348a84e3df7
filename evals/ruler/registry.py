"""The 13 RULER tasks -> family objects; data preparation and its JSONL output."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Optional

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options
from evals.ruler.cwe import CommonWords
from evals.ruler.fwe import FreqWords
from evals.ruler.niah import Niah
from evals.ruler.qa import QA, read_hotpotqa, read_squad
from evals.ruler.text import PieceCounter, load_essay_words
from evals.ruler.vt import VariableTracking

FAMILY_CLASSES = {"niah": Niah, "variable_tracking": VariableTracking,
                  "common_words_extraction": CommonWords, "freq_words_extraction": FreqWords,
                  "qa": QA}


class TaskNotRunnable(RuntimeError):
    """A task whose inputs are missing (QA without its dataset file)."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """User-supplied inputs. Without `essay_json` or `corpus`, essays come from the KJV."""
    essay_json: Optional[str] = None
    corpus: Optional[str] = None
    squad: Optional[str] = None
    hotpotqa: Optional[str] = None

    def haystack_name(self) -> str:
        return self.essay_json or self.corpus or "kjv"


@functools.lru_cache(maxsize=4)
def _essay_words(essay_json, corpus):
    return load_essay_words(essay_json, corpus)


@functools.lru_cache(maxsize=4)
def _qa_data(dataset: str, path: str):
    flag, what = (("--squad", "a SQuAD v2 dev JSON (dev-v2.0.json)") if dataset == "squad" else
                  ("--hotpotqa", "a HotpotQA dev distractor JSON"))
    if not os.path.isfile(path):
        raise TaskNotRunnable(f"{flag}={path}: no such file (give {what})")
    try:
        loaded = (read_squad if dataset == "squad" else read_hotpotqa)(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TaskNotRunnable(f"{flag}={path}: cannot read it as {what} ({e})") from None
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise TaskNotRunnable(f"{flag}={path}: not {what} (missing or odd field: "
                              f"{type(e).__name__} {e})") from None
    if not loaded[0]:
        raise TaskNotRunnable(f"{flag}={path}: holds no answerable question")
    return loaded


def check_resources(res: Resources, tasks) -> None:
    """Loads the QA files the tasks need now, so a bad file fails before any work."""
    for task in tasks:
        spec = constants.TASKS[task]
        if spec.family == "qa":
            dataset = spec.kwargs()["dataset"]
            path = res.squad if dataset == "squad" else res.hotpotqa
            if path:
                _qa_data(dataset, path)


def build_task(name: str, max_len: int, opts: Options, res: Resources) -> Family:
    """The family object for task `name` at target length `max_len`."""
    spec = constants.TASKS[constants.resolve_tasks(name)[0]]
    kwargs = spec.kwargs()
    if spec.family == "niah" and kwargs["type_haystack"] == "essay":
        kwargs["haystack_words"] = _essay_words(res.essay_json, res.corpus)
    if spec.family == "qa":
        path = res.squad if kwargs["dataset"] == "squad" else res.hotpotqa
        if not path:
            flag = "--squad" if kwargs["dataset"] == "squad" else "--hotpotqa"
            raise TaskNotRunnable(f"{name} not run: pass the {kwargs['dataset']} dev file with "
                                  f"{flag}=PATH")
        kwargs = {"dataset": kwargs["dataset"], "loaded": _qa_data(kwargs["dataset"], path)}
    fam = FAMILY_CLASSES[spec.family](name, max_len, opts, **kwargs)
    if opts.reserve is not None:  # the short-length variant (Options.reserve / step_words)
        fam.search = dataclasses.replace(fam.search, reserve=opts.reserve)
    if opts.step_words is not None:
        essay = getattr(fam, "hay", None) == "essay"
        fam.search = dataclasses.replace(fam.search, incremental=opts.step_words if essay else 1)
    return fam


def settings(task: str, max_len: int, num_samples: int, opts: Options, res: Resources,
             tokenizer_name: str) -> dict:
    fam = constants.TASKS[task].family
    return {"task": task, "family": fam, "max_seq_length": max_len, "num_samples": num_samples,
            "tokens_to_generate": constants.FAMILIES[fam]["tokens_to_generate"],
            "metric": constants.METRIC[fam], "tokenizer": tokenizer_name,
            "haystack": res.haystack_name(), "options": opts.recorded(),
            "reference": "NVIDIA/RULER 2024 (230fddc)"}


def prepare(task: str, max_len: int, num_samples: int, tokenizer, opts: Options,
            res: Resources, counter: Optional[PieceCounter] = None,
            method: str = "fast") -> list[dict]:
    """Samples of one task at one length (deterministic by opts.seed)."""
    counter = counter or PieceCounter(tokenizer)
    return build_task(task, max_len, opts, res).samples(counter, num_samples, method)


def minimum_length(task: str, opts: Options, res: Resources, tokenizer,
                   counter: Optional[PieceCounter] = None, start: int = 64) -> int:
    """The smallest target length at which `task` makes a sample (doubling, then bisection)."""
    counter = counter or PieceCounter(tokenizer)

    def ok(length: int) -> bool:
        try:
            build_task(task, length, opts, res).samples(counter, 1)
            return True
        except fit.LengthTooSmallError:
            return False
    lo, hi = start // 2, start
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            raise fit.LengthTooSmallError(f"task {task}: no length up to {hi} works")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def write_jsonl(path: str, header: dict, samples: list[dict]) -> str:
    """Writes a settings line then one sample a line, atomically; returns the sha256."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [json.dumps({"settings": header}, sort_keys=True, ensure_ascii=False)]
    lines += [json.dumps(s, sort_keys=True, ensure_ascii=False) for s in samples]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def read_jsonl(path: str) -> tuple[dict, list[dict]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or "settings" not in rows[0]:
        raise ValueError(f"{path}: not a RULER sample file (first line must hold 'settings')")
    return rows[0]["settings"], rows[1:]
