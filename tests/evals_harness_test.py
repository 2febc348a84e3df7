"""lctx in lm-evaluation-harness: a local MMLU-shaped multiple-choice group scored through
lm-eval equals the same questions scored by hand from the model's log-probabilities; the
MMLU CLI and lm-eval's own CLI (`--model lctx`) run end to end on a tiny export."""
import json
import math
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deps import require

SUBJECTS = {"algebra": "stem", "law": "humanities", "business": "other", "econ":
            "social_sciences"}
N_TEST = {"algebra": 5, "law": 4, "business": 6, "econ": 3}


@pytest.fixture(scope="module")
def export(tmp_path_factory, sp_model_path):
    from lctx import hf
    from lctx.model import Llama, ModelConfig
    cfg = ModelConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, mlp_dim=128, max_seq_len=512, init_std=0.2,
                      attn_impl="blockwise", block_q=16, block_k=16)
    out = str(tmp_path_factory.mktemp("harness") / "hf")
    hf.export_hf(Llama(cfg, rngs=nnx.Rngs(7)), out, tokenizer=sp_model_path)
    return out


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, kjv_text):
    """A 'tinymmlu' group with mmlu's layout and template, over local JSONL files."""
    root = tmp_path_factory.mktemp("tasks")
    words = kjv_text[:20_000].split()
    rng = random.Random(0)
    docs = {}

    def doc():
        return {"question": " ".join(rng.sample(words, 6)) + "?",
                "choices": [" ".join(rng.sample(words, 2)) for _ in range(4)],
                "answer": rng.randrange(4)}
    for subj, cat in SUBJECTS.items():
        for split, n in (("test", N_TEST[subj]), ("dev", 5)):
            rows = [doc() for _ in range(n)]
            docs[(subj, split)] = rows
            with open(root / f"{subj}_{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        (root / f"tinymmlu_{subj}.yaml").write_text(
            f"task: tinymmlu_{subj}\ntag: tinymmlu_{cat}_tasks\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {root}/{subj}_test.jsonl\n"
            f"    dev: {root}/{subj}_dev.jsonl\n"
            "test_split: test\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. '
            '{{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\n'
            'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
            f'description: "The following are multiple choice questions (with answers) about '
            f'{subj}.\\n\\n"\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
        (root / f"_tinymmlu_{cat}.yaml").write_text(
            f"group: tinymmlu_{cat}\ntask:\n  - tinymmlu_{cat}_tasks\naggregate_metric_list:\n"
            "  - metric: acc\n    weight_by_size: True\n")
    (root / "_tinymmlu.yaml").write_text(
        "group: tinymmlu\ntask:\n" + "".join(f"  - tinymmlu_{c}\n" for c in SUBJECTS.values())
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\n")
    return str(root), docs


def _by_hand(export, docs):
    """Per-question choice log-likelihoods from a plain forward of the exported model. Rows
    are filled up to 256 tokens with real tokens after the scored ones: the model is causal,
    so they change nothing before them (and one program serves every row)."""
    from lctx import hf
    from lctx.tokenizer import load_tokenizer
    tok = load_tokenizer(export)
    _, model = hf.load_hf(export)
    graphdef, state = nnx.split(model)

    @jax.jit
    def logprobs(state, x_BT):
        m = nnx.merge(graphdef, state)
        pos = jnp.broadcast_to(jnp.arange(x_BT.shape[1]), x_BT.shape)
        return jax.nn.log_softmax(m.logits(m(x_BT, pos, jnp.ones_like(x_BT))), axis=-1)

    out = {}
    for subj in SUBJECTS:
        for i, d in enumerate(docs[(subj, "test")]):
            ctx = (f"The following are multiple choice questions (with answers) about {subj}."
                   f"\n\n{d['question']}\n" + "".join(f"{L}. {c}\n" for L, c in
                                                      zip("ABCD", d["choices"])) + "Answer:")
            ctx_ids = [tok.bos_id] + tok.encode(ctx)
            lls = []
            for letter in "ABCD":
                whole = [tok.bos_id] + tok.encode(ctx + " " + letter)
                filled = whole[:-1] + [7] * (256 - len(whole) + 1)
                lp = np.asarray(logprobs(state, jnp.array([filled])))[0]
                lls.append(sum(float(lp[j - 1, whole[j]]) for j in range(len(ctx_ids),
                                                                          len(whole))))
            out[(subj, i)] = lls
    return out


def test_lm_eval_scores_equal_hand_scores(export, tasks):
    require("lm_eval")
    from evals.harness import mmlu
    from evals.harness.lm import LctxLM
    root, docs = tasks
    lm = LctxLM(export, batch_size=4, progress=False)
    res = mmlu.evaluate(lm, "tinymmlu", 0, include_path=root, log_samples=True,
                        include_defaults=False)
    hand = _by_hand(export, docs)
    correct = {}
    for subj in SUBJECTS:
        samples = sorted(res["samples"][f"tinymmlu_{subj}"], key=lambda s: s["doc_id"])
        assert len(samples) == N_TEST[subj]
        for s in samples:
            got = [r[0] for r in s["filtered_resps"]]
            want = hand[(subj, s["doc_id"])]
            np.testing.assert_allclose(got, want, atol=1e-4)
            assert s["acc"] == float(int(np.argmax(want)) == s["doc"]["answer"])
        correct[subj] = [s["acc"] for s in samples]
    # Group accuracy: the micro-average; its stderr pooled over the categories.
    flat = [a for v in correct.values() for a in v]
    rows = mmlu.rows(res, "tinymmlu")
    assert rows["mmlu"][0] == pytest.approx(100 * sum(flat) / len(flat))
    var = {s: np.var(v, ddof=1) for s, v in correct.items()}
    n = {s: len(v) for s, v in correct.items()}
    pooled = sum((n[s] - 1) * var[s] for s in n) / (len(flat) - len(n))
    assert rows["mmlu"][1] == pytest.approx(100 * math.sqrt(pooled / len(flat)))
    assert rows["stem"][0] == pytest.approx(100 * np.mean(correct["algebra"]))
    assert len(set(map(tuple, hand.values()))) == len(hand)  # prompt-dependent scores


def test_rolling_loglikelihood_and_generate_until(export, kjv_text):
    require("lm_eval")
    from lm_eval.api.instance import Instance
    from evals.harness.lm import LctxLM
    lm = LctxLM(export, batch_size=4, progress=False, max_model_len=40)
    text = kjv_text[:400]
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = lm.tok_encode(text)
    assert ids[0] == lm.prefix_token_id and len(ids) > 80  # several 40-token windows
    # The same windows scored as (context, continuation) pairs: lm-eval's disjoint windows
    # cover every token once, each predicted from at most 40 tokens.
    from lm_eval import utils
    pairs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
        ids, lm.prefix_token_id, 40, 1)]
    assert sum(len(c) for _, c in pairs) == len(ids)
    assert rolling == pytest.approx(sum(s for s, _ in lm.runner.loglikelihood(pairs)),
                                    abs=1e-3)
    req = Instance("generate_until", {}, ("In the beginning", {"until": ["\n"],
                                                                "max_gen_toks": 6}), 0)
    (gen,) = lm.generate_until([req])
    assert gen == lm.runner.generate([lm.tok_encode("In the beginning")], 6, ["\n"])[0]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"do_sample": True,
                                                                 "temperature": 1.0}), 0)])
    # A RoPE override (HF form, as a JSON model argument would give it) reaches the model.
    scaled = LctxLM(export, batch_size=4, progress=False, max_model_len=40,
                    rope='{"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}')
    assert scaled.runner.cfg.rope.type == "linear"
    assert scaled.runner.loglikelihood(pairs[:1])[0][0] != pytest.approx(
        lm.runner.loglikelihood(pairs[:1])[0][0], abs=1e-3)


def test_mmlu_cli_and_lm_eval_cli(export, tasks, tmp_path, capsys, monkeypatch):
    require("lm_eval")
    from evals.harness import __main__ as harness_cli
    from evals.harness.mmlu import main
    root, _ = tasks
    out = tmp_path / "mmlu"
    assert main([f"--model={export}", "--task=tinymmlu", f"--include_path={root}",
                 "--only_include_path",
                 "--shots=0,1", "--runner_arg=progress=false", f"--out={out}"]) == 0
    table = capsys.readouterr().out
    assert "| category | 0-shot | 1-shot |" in table
    for name in ("mmlu", "humanities", "other", "social sciences", "stem"):
        assert f"| {name} | " in table
    doc = json.loads((out / "mmlu.json").read_text())
    zero = doc["rows"]["0"]["mmlu"]
    assert 0 <= zero["acc"] <= 100 and zero["stderr"] > 0
    # lm-eval's own command line, with the lctx model registered by the wrapper.
    monkeypatch.setattr("sys.argv", [
        "lctx-lm-eval", "--model", "lctx", "--model_args", f"path={export},progress=False",
        "--tasks", "tinymmlu", "--include_path", root, "--output_path", str(tmp_path / "lm"),
        "--batch_size", "4"])
    harness_cli.main()
    found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "lm") for f in fs
             if f.startswith("results")]
    assert len(found) == 1
    res = json.load(open(found[0]))["results"]["tinymmlu"]
    assert 100 * res["acc,none"] == pytest.approx(zero["acc"])
    assert "lctx" in capsys.readouterr().out
