"""docs/PAPER.md, run as written at tiny size: the commands are parsed out of the document,
so the walkthrough and this test cannot drift apart.

What differs from the document, and only this:
* the variables of section 1 (`MODEL=...`): a tiny random Llama made here stands in for
  Llama-3.1-8B-Instruct (its tokenizer carries Llama-3.1-8B-Instruct's own chat template and
  its RoPE is llama3), 40 short KJV passages for the books, datagen's offline extractive
  backend for the generator, temporary directories for the data, the run and InfiniteBench;
* size flags appended to each command (`SIZE`): lengths, sample counts, model dimensions
  (those of the tiny Llama), stage lengths and steps, block sizes, engine memory.
Training uses the configs' own mesh (every device on the context axis), so both stages run
ring attention over the 8 simulated CPU devices. The 650K and 1M training commands differ
from the 350K one only in the config name (checked below); configs_test loads and traces
every config. `sh` blocks need a cluster or are set-up (`NOT_RUN` says why).

After the commands: both stage exports exist in bf16; transformers loads the last one and
reproduces lctx's logits of the stage's final checkpoint; `apply_chat_template` on the
export gives the ids training rendered; RULER (vLLM runner, meta-llama3 template) and
InfiniteBench wrote scores.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "PAPER.md")
TRAINED = ("s1_180k", "s2_350k")
# The two stages' tiny lengths (tokens): the paper recipe's 2 and 4 documents per sample,
# each with its own QA turns (~1,500 tokens a document) and 4 documents' revisits, fit.
T1, T2 = 4096, 12288
EVAL_LEN = 1024
# The tiny Llama (vLLM's CPU attention needs head_dim >= 32).
VOCAB, D, LAYERS, HEADS, KV, HEAD_DIM, MLP = 1024, 64, 2, 2, 1, 32, 128
TRAIN_SIZE = [
    "--config.model.vocab_size=1024", "--config.model.d_model=64", "--config.model.n_layers=2", "--config.model.n_heads=2",
    "--config.model.n_kv_heads=1", "--config.model.head_dim=32", "--config.model.mlp_dim=128",
    f"--config.model.max_seq_len={T2}", "--config.attn.block_q=256", "--config.attn.block_k=256",
    "--config.data.batch_size=2", "--config.opt.grad_accum=2", "--config.opt.loss_chunk=256",
    f"--config.stages.s1_180k.seq_len={T1}", "--config.stages.s1_180k.steps=1"]
SIZE = {  # appended to a command by its program (argparse/absl: the last value wins)
    "datagen": [f"--lengths={T1},{T2}", "--names=s1_180k,s2_350k", "--samples=4",
                "--no-progress"],
    "lctx.plan": [],
    "lctx.export": [],
    "lctx.train": TRAIN_SIZE,
    "lctx.train:s2": TRAIN_SIZE + [f"--config.stages.s2_350k.seq_len={T2}",
                                   "--config.stages.s2_350k.steps=1"],
    "evals.ruler": [f"--lengths={EVAL_LEN}", "--tasks=niah_single_1", "--samples=2",
                    "--runner_arg=tensor_parallel_size=1",
                    f"--runner_arg=max_model_len={EVAL_LEN}",
                    "--runner_arg=llm_kwargs={\"gpu_memory_utilization\": 0.05}",
                    "--runner_arg=enforce_eager=true"],
    "evals.infinitebench": ["--synthetic=2", "--limit=2", f"--max_len={EVAL_LEN - 64}",
                            f"--runner_arg=max_model_len={EVAL_LEN}",
                            "--runner_arg=llm_kwargs={\"gpu_memory_utilization\": 0.05}",
                            "--runner_arg=enforce_eager=true"],
}
NOT_RUN = {  # sh blocks: why the test does not run them
    "bash setup.sh": "CI's .ci/run runs it before the tests",
    "bash datagen/vllm_env.sh": "setup.sh --dev runs it; the vLLM tests use its venv",
    "sbatch": "needs a SLURM cluster; launch_test checks the scripts",
    "CORPUS=": "a SLURM array submission (launch/datagen_array.sbatch)",
    "python3 -m datagen merge": "merges a SLURM array's shards; datagen_pipeline_test runs it",
}


def doc_blocks() -> list[tuple[str, list[str]]]:
    """(language, commands) of every fenced block of docs/PAPER.md, in order; continuation
    lines are joined, comments and blank lines dropped."""
    with open(DOC) as f:
        text = f.read()
    out = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        body = body.replace("\\\n", " ")
        cmds = [ln.split("  #")[0].strip() for ln in body.splitlines()]
        out.append((lang, [c for c in cmds if c and not c.startswith("#")]))
    return out


def program(cmd: str) -> str:
    words = shlex.split(cmd)
    return words[2] if words[:2] == ["python3", "-m"] else words[0]


def tiny_llama(out_dir: str, kjv_text: str) -> str:
    """A random Llama-3.1-shaped HF directory: llama3 RoPE, rms eps 1e-5, and a tokenizer
    carrying Llama-3.1-8B-Instruct's chat template."""
    from tokenizer_test import llama31_template
    from vllm_helpers import build_tiny_llama
    build_tiny_llama(out_dir, kjv_text[:400_000], vocab_size=VOCAB, hidden_size=D, num_layers=LAYERS,
                     max_positions=131072, unigram_bias=False, seed=3, rope_parameters={
                         "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192})
    for name, edit in (("tokenizer_config.json", {"chat_template": llama31_template()}),
                       ("config.json", {"rms_norm_eps": 1e-5})):
        with open(os.path.join(out_dir, name)) as f:
            conf = json.load(f)
        conf.update(edit)
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(conf, f, indent=1)
    return out_dir


def short_books(out_dir: str) -> str:
    """40 passages of 3-12 KJV verses, one .txt each: books small enough for tiny lengths."""
    from lctx.corpora import kjv_verses
    verses = kjv_verses()
    os.makedirs(out_dir)
    for i in range(40):
        chunk = verses[i * 500:i * 500 + 3 + (i * 7) % 10]
        with open(os.path.join(out_dir, f"passage{i:02d}.txt"), "w") as f:
            f.write(" ".join(v[3] for v in chunk))
    return out_dir


def run(cmd: str, env: dict, extra: list[str], timeout: float = 900) -> str:
    full = cmd + "".join(f" {shlex.quote(a)}" for a in extra)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", full], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    print(f"[walkthrough] {time.perf_counter() - t0:6.1f} s  {cmd[:90]}")
    if proc.returncode != 0:
        raise AssertionError(f"documented command failed (rc={proc.returncode}):\n{full}\n"
                             f"--- stdout ---\n{proc.stdout[-3000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-6000:]}")
    return proc.stdout


def test_doc_blocks_are_all_accounted_for():
    blocks = doc_blocks()
    sh = [c for lang, cmds in blocks if lang == "sh" for c in cmds]
    assert sh and all(any(c.startswith(k) for k in NOT_RUN) for c in sh), sh
    assert {lang for lang, _ in blocks} <= {"bash", "sh", ""}
    train = [c for lang, cmds in blocks if lang == "bash" for c in cmds
             if program(c) == "lctx.train"]
    assert [re.search(r"configs/(\w+)\.py", c).group(1) for c in train] == [
        "180k", "350k", "650k", "1m"]
    # 650K and 1M are the 350K command with another config.
    assert {c.replace(f"configs/{n}.py", "configs/350k.py")
            for c, n in zip(train[1:], ("350k", "650k", "1m"))} == {train[1]}


@pytest.mark.slow
@pytest.mark.vllm
def test_paper_walkthrough_as_documented(tmp_path, kjv_text):
    import vllm_helpers
    vllm_helpers.vllm_python()  # raises with the fix when .venv-vllm is missing
    blocks = [(lang, cmds) for lang, cmds in doc_blocks() if lang == "bash"]
    variables = dict(line.split("=", 1) for line in blocks[0][1])
    model = tiny_llama(str(tmp_path / "Llama-3.1-8B-Instruct-tiny"), kjv_text)
    values = {"MODEL": model, "BOOKS": short_books(str(tmp_path / "books")),
              "BACKEND": "extractive", "BACKEND_ARGS": "{}",
              "DATA": str(tmp_path / "data"), "RUN": str(tmp_path / "run"),
              "INFINITEBENCH": str(tmp_path / "infinitebench"), "STAGE": TRAINED[-1]}
    values["SQUAD"], values["HOTPOTQA"] = tiny_runs.ruler_qa_files(str(tmp_path / "ruler_qa"))
    assert set(variables) == set(values), "docs/PAPER.md section 1 changed its variables"
    env = dict(os.environ, **values, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.makedirs(values["INFINITEBENCH"])
    for _, cmds in blocks[1:]:
        for cmd in cmds:
            prog = program(cmd)
            if prog == "lctx.train":
                if not re.search(r"configs/(180k|350k)\.py", cmd):
                    continue  # 650K/1M: the 350K command with another config (see above)
                prog += ":s2" if "350k" in cmd else ""
            assert prog in SIZE, f"docs/PAPER.md runs {prog}, which this test cannot size"
            run(cmd, env, SIZE[prog])
    run_dir, stage = values["RUN"], TRAINED[-1]
    export = os.path.join(run_dir, "hf", stage)
    for s in TRAINED:
        with open(os.path.join(run_dir, "hf", s, "config.json")) as f:
            assert json.load(f)["dtype"] == "bfloat16"
    _check_export_matches_checkpoint(run_dir, stage, export)
    # The export CLI wrote the same stage checkpoint: the same bytes.
    for name in ("model.safetensors", "config.json"):
        with open(os.path.join(export, name), "rb") as a, \
                open(os.path.join(f"{export}-latest", name), "rb") as b:
            assert a.read() == b.read(), name
    _check_chat_template(model, export)
    with open(os.path.join(run_dir, "eval", stage, "ruler", "results.json")) as f:
        ruler = json.load(f)
    assert ruler["settings"]["options"]["chat_template"] == "meta-llama3"
    assert ruler["model"] == export and list(ruler["scores"]) == [str(EVAL_LEN)]
    assert list(ruler["scores"][str(EVAL_LEN)]) == ["niah_single_1"] and not ruler["not_run"]
    with open(os.path.join(run_dir, "eval", stage, "ruler", "preds", str(EVAL_LEN),
                           "niah_single_1.jsonl")) as f:
        assert len(f.read().splitlines()) == 2  # both samples generated by vLLM and scored
    with open(os.path.join(run_dir, "eval", stage, "infinitebench", "scores.json")) as f:
        ib = json.load(f)
    assert ib["preset"] == "he2025" and ib["limit"] == 2
    # The synthetic retrieval tasks ran; the book tasks say their files are absent.
    assert set(ib["scores"]) == {"passkey", "number_string", "kv_retrieval"}
    assert len(ib["not_run"]) == 5 and "average" in ib


def _check_export_matches_checkpoint(run_dir: str, stage: str, export: str) -> None:
    """transformers on the bf16 export = lctx on the checkpoint's weights rounded to bf16."""
    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from lctx import run as run_lib
    mcfg, model, _ = run_lib.Run.open(run_dir).load_model(stage, attn_impl="dense",
                                                          dtype="float32")
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params))
    tokens_BT = np.random.default_rng(0).integers(0, mcfg.vocab_size, (2, 40)).astype(np.int32)
    pos_BT = np.broadcast_to(np.arange(40), (2, 40))
    ours = np.asarray(model.logits(model(tokens_BT, pos_BT, np.ones((2, 40), np.int32))))
    ref = transformers.LlamaForCausalLM.from_pretrained(
        export, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = ref(torch.tensor(tokens_BT)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def _check_chat_template(model_dir: str, export: str) -> None:
    import transformers

    from lctx.tokenizer import ChatFormat, load_tokenizer
    msgs = [{"role": "system", "content": "Answer from the text."},
            {"role": "user", "content": "Who begat Enos?"}]
    trained = ChatFormat(load_tokenizer(model_dir)).render_prompt(msgs)
    tok = transformers.AutoTokenizer.from_pretrained(export)
    served = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                     return_dict=False)
    assert list(served) == trained
    assert "Cutting Knowledge Date" in tok.decode(served)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
