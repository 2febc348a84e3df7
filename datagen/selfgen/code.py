"""Li et al.'s code task: a program written by the generator under a random policy, and
instructions grounded in the recorded snippets and call tree.

The policy alternates three actions, never the same twice in a row: "invent and initialize a
set of variables", "invent a function" and "call a function". For a call the policy itself
picks the function and the argument variables; the generator writes the line. Every step's
output is checked with `ast.parse` only (generated code is never executed, imported or
eval'd): a SyntaxError, a duplicate name or a call that is not the one asked for rejects the
attempt, the reason is recorded, and the call is retried with a derived seed. A step that
still fails becomes template code (`code_fallback`, recorded as source "template"), so the
program always has its variables, functions and calls.

The recorded steps are the provenance: which function's call produced each variable, and
which variables went into it (call arguments and the variables an initializer reads,
transitively). The mechanical questions ("Which function produced the variable {v}?", "List
all the variables that participated in computing {v}") are answered from that record, never
by the generator.
"""
from __future__ import annotations

import ast
import keyword
import random
import re
from typing import Any

from datagen.jsonfix import BadOutput
from datagen.qa import stable_seed
from datagen.selfgen import calls, prompts, wordnet
from datagen.selfgen.config import SelfGenConfig

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def ident(noun: str) -> str:
    """A Python identifier stem for a noun ("Abbe_condenser" -> "abbe_condenser")."""
    s = re.sub(r"\W+", "_", wordnet.display(noun).lower()).strip("_") or "item"
    s = s if s[0].isalpha() else "n_" + s
    return s + "_" if keyword.iskeyword(s) else s


def _source(text: str) -> ast.Module:
    """The code in a reply (a fenced block if any), parsed; raises BadOutput naming a
    SyntaxError. Parsing is all that is ever done with generated code."""
    m = _FENCE.search(text or "")
    src = (m.group(1) if m else text or "").strip("\n")
    if not src.strip():
        raise BadOutput("empty code")
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise BadOutput(f"SyntaxError: {e.msg} (line {e.lineno})") from None
    tree.src = src  # type: ignore[attr-defined]
    return tree


class Program:
    """The steps so far and the names they define."""

    def __init__(self, noun: str):
        self.noun, self.steps = noun, []
        self.variables: list[str] = []            # in definition order
        self.functions: dict[str, list[str]] = {}  # name -> parameters

    def code(self) -> str:
        return "\n\n".join(s["code"] for s in self.steps)

    def names(self) -> set[str]:
        return set(self.variables) | set(self.functions)

    def add(self, step: dict[str, Any]) -> None:
        self.steps.append(step)
        self.variables += step.get("defines", [])
        if step["kind"] == "func":
            self.functions[step["func"]] = step["params"]

    # ---- checking generator output (ast only) -----------------------------------------
    def parse_vars(self, text: str, n: int) -> dict[str, Any]:
        tree = _source(text)
        defines, deps = [], {}
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                raise BadOutput(f"expected only assignments to single names, found "
                                f"{type(node).__name__} at line {node.lineno}")
            v = node.targets[0].id
            if v in self.names() or v in defines:
                raise BadOutput(f"variable {v!r} is not new")
            called = {c.func.id for c in ast.walk(node.value) if isinstance(c, ast.Call)
                      and isinstance(c.func, ast.Name) and c.func.id in self.functions}
            if called:
                raise BadOutput(f"an initializer calls the program's function {called}; "
                                f"calls are their own step")
            deps[v] = sorted({x.id for x in ast.walk(node.value) if isinstance(x, ast.Name)
                              and x.id in set(self.variables) | set(defines)})
            defines.append(v)
        if len(defines) != n:
            raise BadOutput(f"{len(defines)} variables, {n} asked")
        return {"kind": "vars", "code": tree.src, "defines": defines, "deps": deps}

    def parse_func(self, text: str, k: int) -> dict[str, Any]:
        tree = _source(text)
        defs = [x for x in tree.body if isinstance(x, ast.FunctionDef)]
        if len(tree.body) != 1 or len(defs) != 1:
            raise BadOutput("expected exactly one function definition and nothing else")
        fn = defs[0]
        params = [a.arg for a in fn.args.args]
        if fn.name in self.names():
            raise BadOutput(f"function name {fn.name!r} is not new")
        if len(params) != k or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs:
            raise BadOutput(f"function takes {len(params)} positional parameters, {k} asked")
        return {"kind": "func", "code": tree.src, "func": fn.name, "params": params,
                "defines": []}

    def parse_call(self, text: str, func: str, args: list[str]) -> dict[str, Any]:
        tree = _source(text)
        node = tree.body[0] if len(tree.body) == 1 else None
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            raise BadOutput("expected one line `new_variable = function(arguments)`")
        call, v = node.value, node.targets[0].id
        got = [a.id if isinstance(a, ast.Name) else None for a in call.args]
        if not isinstance(call.func, ast.Name) or call.func.id != func:
            raise BadOutput(f"the line does not call {func}")
        if got != args or call.keywords:
            raise BadOutput(f"arguments {got} differ from the requested {args}")
        if v in self.names():
            raise BadOutput(f"variable {v!r} is not new")
        return {"kind": "call", "code": tree.src, "func": func, "args": list(args),
                "defines": [v]}

    # ---- template steps (a step the generator failed) --------------------------------
    def _fresh(self, stem: str, taken: set[str] = frozenset()) -> str:
        k, used = 1, self.names() | set(taken)
        while f"{stem}_{k}" in used:
            k += 1
        return f"{stem}_{k}"

    def template(self, kind: str, rng: random.Random, n: int = 0, k: int = 0,
                 func: str = "", args: list[str] | None = None) -> dict[str, Any]:
        stem = ident(self.noun)
        if kind == "vars":
            defines: list[str] = []
            for _ in range(n):
                defines.append(self._fresh(stem, set(defines)))
            return {"kind": "vars", "defines": defines, "deps": {v: [] for v in defines},
                    "code": "\n".join(f"{v} = {rng.randint(1, 100)}" for v in defines)}
        if kind == "func":
            name, params = self._fresh(stem + "_step"), [f"p{i}" for i in range(k)]
            return {"kind": "func", "code": f"def {name}({', '.join(params)}):\n    return "
                                            f"{' + '.join(params)}",
                    "func": name, "params": params, "defines": []}
        v = self._fresh(func + "_result")
        return {"kind": "call", "code": f"{v} = {func}({', '.join(args or [])})",
                "func": func, "args": list(args or []), "defines": [v]}


def provenance(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{variable: {"function": producing function or None, "participants": [...]}} from the
    recorded steps; participants are transitive, in definition order."""
    order: list[str] = []
    direct: dict[str, list[str]] = {}
    made_by: dict[str, str | None] = {}
    for s in steps:
        if s["kind"] == "vars":
            for v in s["defines"]:
                order.append(v)
                direct[v], made_by[v] = list(s["deps"][v]), None
        elif s["kind"] == "call":
            v = s["defines"][0]
            order.append(v)
            direct[v], made_by[v] = list(s["args"]), s["func"]
    out = {}
    for v in order:
        seen, todo = set(), list(direct[v])
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo += direct.get(x, [])
        out[v] = {"function": made_by[v], "participants": [x for x in order if x in seen]}
    return out


def _choose(prev: str | None, prog: Program, left: int, rng: random.Random) -> str:
    """The policy: uniform over the actions that can run, never the previous one; the first
    steps make a variable and a function, and the last makes a call if none was made."""
    if not prog.variables:
        return "vars"
    if not prog.functions:
        return "func"
    if left == 1 and not any(s["kind"] == "call" for s in prog.steps):
        return "call"
    return rng.choice([k for k in ("vars", "func", "call") if k != prev])


def write_program(noun: str, seed: int, cfg: SelfGenConfig) -> calls.Coroutine:
    """Coroutine: the random policy's steps, one generator call per step; returns Program."""
    rng = random.Random(seed)
    prog, prev = Program(noun), None
    n_steps = rng.randint(*cfg.code_steps)
    for j in range(n_steps):
        kind = _choose(prev, prog, n_steps - j, rng)
        code = prog.code() or "# (nothing yet)"
        noun_d = wordnet.display(noun)
        if kind == "vars":
            n = rng.randint(*cfg.code_vars)
            prompt = prompts.render(prompts.CODE_VARS, noun=noun_d, code=code, n=n)
            parse, fb = (lambda t, r, n=n: prog.parse_vars(t, n)), dict(n=n)
        elif kind == "func":
            k = rng.randint(*cfg.code_params)
            prompt = prompts.render(prompts.CODE_FUNC, noun=noun_d, code=code, k=k)
            parse, fb = (lambda t, r, k=k: prog.parse_func(t, k)), dict(k=k)
        else:
            func = rng.choice(sorted(prog.functions))
            n_args = len(prog.functions[func])
            args = (rng.sample(prog.variables, n_args) if len(prog.variables) >= n_args
                    else rng.choices(prog.variables, k=n_args))
            prompt = prompts.render(prompts.CODE_CALL, noun=noun_d, code=code, func=func,
                                    args=", ".join(args))
            parse = lambda t, r, f=func, a=args: prog.parse_call(t, f, a)  # noqa: E731
            fb = dict(func=func, args=args)
        out = (yield [calls.Call(f"code_{kind}", prompt, stable_seed(seed, "step", j),
                                 cfg.max_tokens_code, parse)])[0]
        if out.ok:
            step = dict(out.value, source="generator")
        elif cfg.code_fallback:
            step = dict(prog.template(kind, rng, **fb), source="template")
        else:
            prev = kind
            continue
        step.update(attempts=out.attempts, errors=out.errors)
        prog.add(step)
        prev = kind
    return prog
