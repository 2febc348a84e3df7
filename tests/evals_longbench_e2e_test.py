"""LongBench end to end on CPU: `python -m evals.longbench` with the lctx runner and with vLLM on
one tiny lctx export (tests/vllm_helpers.py's position-aware random Llama, KJV BPE with the
Llama-3 specials).

Official preset, three datasets built from KJV text, prompts cut from ~1,500 to 600 tokens:
hotpotqa (Llama-3 chat template), trec (no template, first-line and classification scoring),
samsum (no template; "\\n" stops it and may not be the first token). Both runs must feed the
runners identical token ids (the recorded prompt digests) and agree on the greedy
predictions (one miss allowed: two fp32 kernels can split a near-tie of a random model), and
print the per-dataset table.
"""
import json
import os

import pytest

from vllm_helpers import build_tiny_llama, vllm_python

DATASETS = ["hotpotqa", "trec", "samsum"]


def _data(root, kjv):
    os.makedirs(root)
    classes = ["Description", "Entity", "Human", "Location", "Number", "Abbreviation"]
    for d in DATASETS:
        with open(os.path.join(root, f"{d}.jsonl"), "w") as f:
            for i in range(3):
                ctx = kjv[20_000 * i: 20_000 * i + 6_000]
                row = {"context": ctx, "input": f"Who begat whom in chapter {i + 1}?",
                       "answers": ["Adam begat Seth"], "length": 1000,
                       "all_classes": classes if d == "trec" else None}
                f.write(json.dumps(row) + "\n")


def _run(capsys, model, data, out, runner, runner_args):
    from evals.longbench.__main__ import main
    args = [f"--model={model}", f"--tokenizer={model}", f"--data_dir={data}", f"--out={out}",
            f"--runner={runner}", "--max_length=600", "--chat_template=llama3",
            f"--datasets={','.join(DATASETS)}", "--batch_size=3"]
    assert main(args + [f"--runner_arg={a}" for a in runner_args]) == 0
    table = capsys.readouterr().out
    rows = {d: [json.loads(x) for x in open(os.path.join(out, "preds", f"{d}.jsonl"))]
            for d in DATASETS}
    return table, rows, json.load(open(os.path.join(out, "scores.json")))


@pytest.mark.slow
@pytest.mark.vllm
def test_longbench_lctx_and_vllm_runners_agree(tmp_path, kjv_text, capsys):
    from lctx import hf
    vllm_python()  # fail (never skip) with the build command when the venv is missing
    src = build_tiny_llama(str(tmp_path / "src"), kjv_text[:300_000], max_positions=4096,
                           unigram_bias=False, qk_scale=25.0)
    _, model = hf.load_hf(src)
    export = hf.export_hf(model, str(tmp_path / "export"), tokenizer=src)
    data = str(tmp_path / "data")
    _data(data, kjv_text)
    table_l, rows_l, doc_l = _run(capsys, export, data, str(tmp_path / "lctx"), "lctx",
                                  ["batch_size=3", "progress=false"])
    table_v, rows_v, doc_v = _run(
        capsys, export, data, str(tmp_path / "vllm"), "vllm",
        ["dtype=float32", "max_model_len=4096", "enforce_eager=true",
         'llm_kwargs={"kv_cache_memory_bytes": 134217728}'])
    same = total = 0
    for d in DATASETS:
        assert [r["prompt_sha"] for r in rows_l[d]] == [r["prompt_sha"] for r in rows_v[d]]
        assert all(560 <= r["prompt_tokens"] <= 680 for r in rows_l[d])  # cut, then templated
        for a, b in zip(rows_l[d], rows_v[d]):
            total += 1
            same += a["pred"] == b["pred"]
    print(f"\nagreement {same}/{total}\n{table_l}")
    assert same >= total - 1
    preds = [r["pred"] for d in DATASETS for r in rows_l[d]]
    assert len(set(preds)) > 1, f"prompt-independent predictions: {preds}"
    # samsum stops after its first "\n" and never starts with one (min_new_tokens=1).
    assert all(not r["pred"].startswith("\n") and r["pred"].count("\n") <= 1
               for r in rows_l["samsum"] + rows_v["samsum"])
    for table, doc in ((table_l, doc_l), (table_v, doc_v)):
        assert set(doc["scores"]) == set(DATASETS)
        for d in DATASETS:
            assert f"| {d} |" in table
        assert "**average (en)**" in table
