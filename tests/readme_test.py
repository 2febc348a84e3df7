"""README.md and docs/DESIGN.md describe today's tree: every command the README names is
started by a test, and DESIGN's ownership table names every lctx module."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def readme_programs() -> list[str]:
    """The programs of the README's commands: `python3 -m <module>`, console scripts and
    `python3 bench/<script>.py`, in inline code and in fenced blocks."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    found = set(re.findall(r"python3? -m ([\w.]+)", text))
    found |= set(re.findall(r"\b(lctx-lm-eval)\b", text))
    found |= {f"bench/{b}" for b in re.findall(r"`(\w+_bench\.py)`", text)}
    return sorted(found - {"pytest"})


def _started(program: str, sources: str) -> bool:
    if program.startswith("bench/"):  # tests/bench_test.py names scripts like this
        name = program.split("/", 1)[1]
        return f'"{name}"' in sources or program in sources
    if "." not in program and "-" in program:  # a console script, run as argv[0]
        return f'"{program}"' in sources
    m = re.escape(program)
    if re.search(rf'"-m",\s*"{m}"|-m {m}\b|from {m}\.__main__ import|'
                 rf"from {m} import __main__|from {m} import main\b", sources):
        return True
    parent, _, last = program.rpartition(".")  # `from lctx import plan` ... `plan.main([`
    return bool(parent and re.search(rf"from {re.escape(parent)} import [\w, ]*\b{last}\b",
                                     sources) and re.search(rf"\b{last}\.main\(", sources))


def test_every_readme_command_is_started_by_a_test():
    sources = "".join(open(p, encoding="utf-8").read()
                      for p in glob.glob(os.path.join(TESTS, "*.py"))
                      if not p.endswith("readme_test.py"))
    programs = readme_programs()
    assert {"lctx.train", "lctx.plan", "datagen.selfgen", "evals.longbench",
            "evals.harness", "lctx-lm-eval", "bench/ring_bench.py"} <= set(programs), programs
    missing = [p for p in programs if not _started(p, sources)]
    assert missing == [], f"README commands no test starts: {missing}"


def test_design_names_every_lctx_module():
    """docs/DESIGN.md's ownership table names every module of lctx/ (a new module says what
    it owns there)."""
    with open(os.path.join(ROOT, "docs", "DESIGN.md"), encoding="utf-8") as f:
        design = f.read()
    table = design[design.index("## Ownership"):design.index("## A run on disk")]
    modules = [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "lctx", "*.py"))]
    missing = sorted(m for m in modules if m != "__init__.py" and m not in table)
    assert missing == [], f"lctx modules docs/DESIGN.md does not name: {missing}"
