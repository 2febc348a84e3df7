"""`LctxLM`: lctx runs and exports as a model of lm-evaluation-harness (`--model lctx`).

    lm_eval --model lctx --model_args path=RUN_OR_EXPORT --tasks mmlu --num_fewshot 5
    lctx-lm-eval --model lctx ...   (the same CLI for lm-eval releases that do not load
                                     plugins: see evals/harness/__main__.py)

Model arguments: `path` (an HF export or an lctx run: workdir, ckpt/<stage>[/<step>]), and
`LctxRunner`'s: tokenizer, rope (an lctx or HF RoPE dict, e.g. in JSON model_args:
`{"path": ..., "rope": {"rope_type": "yarn", "factor": 4.0, ...}}`), max_model_len, devices,
attn_impl, block_q, block_k, stage, step; `batch_size` (lm-eval's flag); `add_bos_token`
(default: what the tokenizer adds, as lm-eval's HF model does).

Tokenisation follows lm-eval's HF model (`TemplateLM`): `tok_encode` is `tokenizer.encode`
with the tokenizer's own prefix (BOS) unless the text already starts with it; a context's
trailing spaces move to the continuation; an empty context becomes the prefix token; inputs
longer than the window are cut from the left. Log-likelihoods come from
`LctxRunner.loglikelihood` (batched, float32 log-softmax); generation is greedy only.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import lm_eval.models  # noqa: F401  lm-eval fills its built-in models only into an empty registry
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

log = logging.getLogger("evals.harness")


def _rope(value):
    if value is None or isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"rope={value!r}: give a JSON object, e.g. in JSON --model_args "
                         '{"path": ..., "rope": {"rope_type": "yarn", "factor": 4.0, '
                         '"rope_theta": 500000.0, "original_max_position_embeddings": 8192}}'
                         ) from None


@register_model("lctx")
class LctxLM(TemplateLM):
    """lm-eval `LM` over an `LctxRunner` (see the module docstring for the arguments)."""

    def __init__(self, path: str | None = None, *, pretrained: str | None = None,
                 batch_size: int | str = 8, max_batch_size: int | None = None,
                 device: str | None = None, add_bos_token: bool | None = None,
                 rope: Any = None, runner=None, **runner_kwargs):
        super().__init__()
        from evals.runners.lctx_runner import LctxRunner
        from evals.tokens import HFText
        path = path or pretrained
        if runner is None:
            if not path:
                raise ValueError("--model_args needs path=<lctx run or HF export>")
            if isinstance(batch_size, str):  # lm-eval's "auto" / "auto:N": a fixed size here
                batch_size = int(batch_size) if batch_size.isdigit() else 8
            runner = LctxRunner(path, rope=_rope(rope), batch_size=int(batch_size),
                                **runner_kwargs)
        self.runner = runner
        self.text = HFText(runner.tokenizer, add_prefix=add_bos_token)
        self._prefix = self.text.prefix

    # -- tokenisation (TemplateLM's hooks) -----------------------------------------------
    @property
    def eot_token_id(self) -> int:
        tok = self.runner.tokenizer
        return tok.eot_id if tok.eot_id is not None else min(tok.eos_ids)

    @property
    def prefix_token_id(self) -> int:
        return self._prefix[0] if self._prefix else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.runner.max_len

    @property
    def tokenizer_name(self) -> str:
        return str(self.runner.tokenizer.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        ids = self.text.encode(string)
        if add_special_tokens is False or not self._prefix:
            return ids
        if add_special_tokens is None and ids[:len(self._prefix)] == self._prefix:
            return ids  # the text already starts with BOS
        return self._prefix + ids

    def tok_decode(self, ids) -> str:
        return self.text.decode(ids)

    # -- the three request types -----------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs
                              ) -> list[tuple[float, bool]]:
        pairs = []
        for _, ctx, cont in requests:
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]  # cut from the left
            pairs.append((whole[:len(whole) - len(cont)], list(cont)))
        out = self.runner.loglikelihood(pairs)
        for (key, _, _), answer in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        out = [0.0] * len(requests)
        for i, (s, _) in zip(owner, scores):
            out[i] += s
        for req, s in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, s)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
        eos = self.text.tok.decode([self.eot_token_id])
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), 256)
            if kw.get("do_sample") or kw.get("temperature", 0.0) > 0:
                raise ValueError("the lctx model decodes greedily; sampling (do_sample/"
                                 "temperature > 0) is not supported")
            until = handle_stop_sequences(kw.get("until"), eos=eos)
            max_gen = int(kw["max_gen_toks"])
            if max_gen >= self.max_length:
                raise ValueError(f"max_gen_toks={max_gen} must be below the window "
                                 f"{self.max_length}")
            ids = self.tok_encode(context)[-(self.max_length - max_gen):]
            settings.append(ids)
            groups.setdefault((tuple(until), max_gen), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for (until, max_gen), idx in tqdm(groups.items(), desc="lctx generate_until",
                                          disable=disable_tqdm):
            texts = self.runner.generate([settings[i] for i in idx], max_gen, list(until))
            for i, t in zip(idx, texts):
                out[i] = t
                self.cache_hook.add_partial("generate_until", requests[i].args, t)
        return out
