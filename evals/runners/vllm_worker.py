"""vLLM engine worker for `VLLMRunner`: JSON lines on stdin/stdout, run inside `.venv-vllm`.

    .venv-vllm/bin/python -m evals.runners.vllm_worker '<json engine config>'

Replies on stdout, one JSON object a line; everything libraries print goes to stderr (the
protocol keeps a private duplicate of the original stdout). First line: {"ready": true,
"max_len": N, ...} or {"ready": false, "error": ...}. Then per request line
{"op": "generate", "prompts": [...], "max_new_tokens": n, "stop": [...], "stop_ids": [...],
"min_new_tokens": k} the reply is
{"ok": true, "texts": [...]} or {"ok": false, "kind": "...", "error": "..."};
{"op": "close"} ends the worker.
"""
from __future__ import annotations

import json
import os
import sys
import traceback


def _engine(cfg: dict):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm
    kwargs = dict(cfg.get("llm_kwargs") or {})
    for key in ("max_model_len", "tokenizer", "hf_overrides"):
        if cfg.get(key) is not None:
            kwargs[key] = cfg[key]
    return vllm.LLM(model=cfg["model"], dtype=cfg.get("dtype", "auto"),
                    tensor_parallel_size=cfg.get("tensor_parallel_size", 1),
                    enforce_eager=cfg.get("enforce_eager", False),
                    enable_prefix_caching=True, seed=0, **kwargs)


def _generate(llm, max_len: int, req: dict) -> list[str]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from evals.runners.base import check_lengths, cut_at_stop
    prompts, n_new = req["prompts"], int(req["max_new_tokens"])
    stop = [s for s in req.get("stop") or [] if s]
    tok = llm.get_tokenizer()
    if prompts and isinstance(prompts[0], str):
        # Special-token strings become special tokens; nothing (no BOS) is added.
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    else:
        ids = [list(map(int, p)) for p in prompts]
    check_lengths([len(x) for x in ids], max_len, n_new)
    # stop_token_ids: generated and kept in the text (unless special), like HF's eos list;
    # min_tokens bars eos and stop_token_ids before it, like HF's min_length.
    params = SamplingParams(temperature=0.0, max_tokens=n_new, stop=stop or None,
                            stop_token_ids=[int(t) for t in req.get("stop_ids") or []] or None,
                            min_tokens=int(req.get("min_new_tokens") or 0),
                            skip_special_tokens=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params,
                        use_tqdm=False)
    # Decode the whole id sequence (the incremental detokenizer holds back a trailing partial
    # UTF-8 character); the stop string, which vLLM stopped on, is cut here.
    return [cut_at_stop(tok.decode(o.outputs[0].token_ids, skip_special_tokens=True), stop)
            for o in outs]


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints must never corrupt the protocol
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        cfg = json.loads(sys.argv[1])
        llm = _engine(cfg)
        max_len = int(llm.llm_engine.model_config.max_model_len)
    except Exception as e:  # the parent shows this; the traceback goes to the log
        traceback.print_exc()
        reply({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    import vllm
    reply({"ready": True, "max_len": max_len, "vllm_version": vllm.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "close":
            break
        try:
            reply({"ok": True, "texts": _generate(llm, max_len, req)})
        except Exception as e:
            traceback.print_exc()
            reply({"ok": False, "kind": type(e).__name__, "error": str(e)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
