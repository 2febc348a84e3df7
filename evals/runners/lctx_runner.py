"""`LctxRunner`: greedy generation with lctx's own Flax model (`lctx.generate`) for the evals.

Loads either an HF-format directory (an lctx export or any Llama checkpoint, `lctx.hf.load_hf`)
or an lctx training run (a workdir, `<workdir>/ckpt/<stage>` or `<workdir>/ckpt/<stage>/<step>`,
read by `lctx.run`: the stage's model config and RoPE, its checkpoint's parameters, the run's
tokenizer). A RoPE override evaluates zero-shot
RoPE scaling (e.g. YaRN x4 on a model trained at 8K), usually together with `max_model_len`.

Generation: prompts are sorted by length, batched, right-padded to a few static bucket lengths
(powers of two, so a RULER run compiles a handful of programs rather than one per prompt),
prefilled with blockwise attention and decoded with `lctx.generate`'s KV-cache loop. A batch
short of `batch_size` is filled with copies of its last prompt: greedy copies finish together
with it, so they never lengthen the decode loop. With more than one device the parameters are
sharded over an (fsdp) mesh by `lctx.sharding` rules and XLA partitions the computation.

This is the one `evals` module that imports JAX (see docs/DESIGN.md).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

from tqdm import tqdm

from evals.runners.base import (Prompts, check_lengths, check_min_new_tokens, check_prompts,
                                cut_at_stop)

log = logging.getLogger("evals.runners.lctx")

# RoPE types whose frequencies depend on the current length (HF: max position id + 1): padding
# a prompt to a bucket would change them, so such models run one prompt at a time, unpadded.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_override(rope: Any, max_positions: int):
    """An `lctx.rope.RopeConfig` from a RopeConfig, an lctx dict {"type": ...} (a run config's
    rope section / checkpoint meta) or an HF dict {"rope_type": ...} (v5 `rope_parameters`)."""
    from lctx import rope as rope_lib
    if isinstance(rope, rope_lib.RopeConfig):
        return rope
    if isinstance(rope, str):
        rope = json.loads(rope)
    if not isinstance(rope, dict):
        raise TypeError(f"rope={rope!r}: give a lctx.rope.RopeConfig, an lctx dict "
                        "{'type': 'yarn', 'theta': ..., 'factor': ...} or an HF dict "
                        "{'rope_type': 'yarn', 'rope_theta': ..., 'factor': ...}")
    if "type" in rope and "rope_type" not in rope:
        return rope_lib.make_rope(**rope)
    return rope_lib.rope_from_hf({"rope_parameters": dict(rope),
                                  "max_position_embeddings": max_positions})


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        n.endswith(".safetensors") or n == "model.safetensors.index.json"
        for n in os.listdir(path))


def load_checkpoint(path: str, *, stage: str | None = None, step: int | None = None,
                    mesh=None, **overrides):
    """Loads an lctx training checkpoint's parameters into a `Llama` (`lctx.run` reads the
    run: the stage's model config with its RoPE, the checkpoint's params only).

    Args:
      path: the run's workdir, `<workdir>/ckpt/<stage>` or `<workdir>/ckpt/<stage>/<step>`.
      stage, step: pick a stage / step (default: the latest checkpoint of the last stage).
      mesh: shard the parameters over this mesh (`lctx.sharding` rules); None: one device.
      **overrides: ModelConfig fields (attn_impl, rope, max_seq_len, ...).

    Returns:
      (ModelConfig, Llama, meta dict of the checkpoint (stage, step, rope, workdir, ...)).
    """
    from lctx import run as run_lib
    try:
        run, path_stage, path_step = run_lib.locate(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model={path!r} is neither an HF directory (config.json + "
                                f"safetensors) nor an lctx workdir / ckpt/<stage> directory "
                                f"with a checkpoint ({e})") from e
    return run.load_model(stage or path_stage, step if step is not None else path_step, mesh,
                          **overrides)


def bucket_length(n: int, budget: int, min_bucket: int) -> int:
    """The static prompt length for an `n`-token prompt: the next power of two (at least
    `min_bucket`), capped at `budget` (the window less the generation budget)."""
    return min(max(min_bucket, 1 << max(0, math.ceil(math.log2(n)))), budget)


class LctxRunner:
    """Runner over an lctx model in this process (contract: `evals.runners.base`).

    Args:
      model: HF-format directory (config.json + safetensors), or an lctx run: workdir,
        `<workdir>/ckpt/<stage>` or `<workdir>/ckpt/<stage>/<step>`.
      tokenizer: tokenizer path; default: the HF directory / the run's tokenizer.
      rope: RoPE override: an `lctx.rope.RopeConfig`, an lctx dict ({"type": "yarn", ...}) or
        an HF dict ({"rope_type": "yarn", "rope_theta": ..., ...}); `rope_parameters` is an
        alias (the VLLMRunner's name, so `--runner_arg rope_parameters=...` works for both).
      max_model_len: the context window (prompt + generation) instead of the model's
        `max_seq_len` / `max_position_embeddings` (e.g. with a context-extending RoPE).
      attn_impl: prefill attention: 'blockwise' (default, O(T) memory) or 'dense'.
      block_q, block_k: blockwise block lengths in tokens.
      devices: number of devices (or a device list) to shard the parameters over; None: 1.
      batch_size: prompts per generate call.
      min_bucket: the smallest static prompt length.
      stage, step: which checkpoint of an lctx run (default: the latest).
      progress: show a tqdm bar per `generate` call.
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, rope: Any = None,
                 rope_parameters: Any = None, max_model_len: int | None = None,
                 attn_impl: str = "blockwise", block_q: int = 512, block_k: int = 512,
                 devices: int | Sequence[Any] | None = None, batch_size: int = 8,
                 min_bucket: int = 128, stage: str | None = None,
                 step: int | None = None, progress: bool = True):
        from lctx import hf
        from lctx.tokenizer import load_tokenizer

        from evals.ruler.text import SpecialTextTokenizer
        from evals.tokens import special_ids
        if attn_impl not in ("blockwise", "dense"):
            raise ValueError(
                f"attn_impl={attn_impl!r}: use 'blockwise' or 'dense'. Ring attention is for "
                "training: with a KV cache lctx.model runs blockwise on one sequence shard; "
                "pass devices=N to shard the parameters instead")
        if rope is not None and rope_parameters is not None:
            raise ValueError("give rope= or rope_parameters=, not both")
        if batch_size < 1 or min_bucket < 1:
            raise ValueError(f"batch_size={batch_size} and min_bucket={min_bucket} must be >= 1")
        if not os.path.isdir(model):
            raise FileNotFoundError(f"model={model!r} is not a directory: give an HF export or "
                                    "an lctx workdir / ckpt/<stage> directory")
        self.mesh = self._mesh(devices)
        overrides = dict(attn_impl=attn_impl, block_q=block_q, block_k=block_k)
        if _is_hf_dir(model):
            self.cfg, self.model = hf.load_hf(model, mesh=self.mesh, **overrides)
            tokenizer = tokenizer or model
            self.meta = {}
        else:
            self.cfg, self.model, self.meta = load_checkpoint(model, stage=stage, step=step,
                                                              mesh=self.mesh, **overrides)
            if tokenizer is None:
                from lctx import run as run_lib
                tokenizer = run_lib.Run.open(self.meta["workdir"]).tokenizer
        rope = rope if rope is not None else rope_parameters
        changes = {}
        if rope is not None:
            changes["rope"] = _rope_override(rope, self.cfg.max_seq_len)
        if max_model_len is not None:
            if int(max_model_len) < 2:
                raise ValueError(f"max_model_len={max_model_len} must be >= 2")
            changes["max_seq_len"] = int(max_model_len)
        if changes:  # the config is static data of the graph: swap it, keep the weights
            import dataclasses
            self.cfg = dataclasses.replace(self.cfg, **changes)
            self.model.cfg = self.cfg
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.vocab_size > self.cfg.vocab_size:
            raise ValueError(f"tokenizer {tokenizer} has {self.tokenizer.vocab_size} ids but "
                             f"the model's vocab_size is {self.cfg.vocab_size}")
        self._encoder = SpecialTextTokenizer(self.tokenizer)
        self._special_ids = special_ids(self.tokenizer)
        self.max_len = self.cfg.max_seq_len
        self.max_model_len = self.max_len
        self.batch_size, self.min_bucket, self.progress = batch_size, min_bucket, progress
        self._exact = self.cfg.rope.type in _LENGTH_DEPENDENT_ROPE
        log.info("lctx runner: %s, rope %s, window %d, %s", model, self.cfg.rope,
                 self.max_len, "mesh " + str(dict(self.mesh.shape)) if self.mesh else "1 device")

    @staticmethod
    def _mesh(devices):
        import jax

        from lctx import sharding as sharding_lib
        if devices is None:
            return None
        devs = (jax.devices()[:int(devices)] if isinstance(devices, int) else list(devices))
        if isinstance(devices, int) and len(devs) < devices:
            raise ValueError(f"devices={devices} but only {len(jax.devices())} are visible")
        if len(devs) <= 1:
            return None
        return sharding_lib.make_mesh([(a, len(devs) if a == sharding_lib.FSDP else 1)
                                       for a in sharding_lib.MESH_AXES], devices=devs)

    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids of the prompts: text with special-token strings read as special tokens
        and nothing added (no BOS), ids as given."""
        if check_prompts(prompts, 1) == "text":
            return self._encoder.encode_batch(list(prompts))
        return [list(map(int, p)) for p in prompts]

    def generate(self, prompts: Prompts, max_new_tokens: int, stop: Sequence[str] = (), *,
                 stop_ids: Sequence[int] = (), min_new_tokens: int = 0) -> list[str]:
        """Greedy continuations (contract: `evals.runners.base`)."""
        check_prompts(prompts, max_new_tokens)
        check_min_new_tokens(min_new_tokens, max_new_tokens, supported=1)
        ids = self.encode(prompts)
        if not ids:
            return []
        check_lengths([len(x) for x in ids], self.max_len, max_new_tokens)
        bad = [(i, t) for i, x in enumerate(ids) for t in x if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {bad[0][0]} holds token id {bad[0][1]}, outside the "
                             f"model's vocabulary [0, {self.cfg.vocab_size})")
        out_ids = self.generate_ids(ids, max_new_tokens, stop_ids=stop_ids,
                                    min_new_tokens=min_new_tokens)
        return [cut_at_stop(self.tokenizer.decode([t for t in o if t not in self._special_ids]),
                            stop) for o in out_ids]

    def generate_ids(self, ids: list[list[int]], max_new_tokens: int, *,
                     stop_ids: Sequence[int] = (), min_new_tokens: int = 0
                     ) -> list[list[int]]:
        """Greedy token ids after each prompt, cut before the first end-of-turn/text id and
        after the first of `stop_ids`; with `min_new_tokens=1` the first token is the best
        one that is neither (HF's `min_length` = prompt + 1)."""
        first: list[list[int]] = [[] for _ in ids]
        if min_new_tokens:
            barred = sorted(set(self.tokenizer.eos_ids) | set(stop_ids))
            first = [[t] for t in self._first_tokens(ids, barred)]
            if max_new_tokens == 1:
                return first
            ids = [x + f for x, f in zip(ids, first)]
            max_new_tokens -= 1
        stops = set(stop_ids)
        rest = self._generate_rows(ids, max_new_tokens)
        out = []
        for f, row in zip(first, rest):
            cut = next((k + 1 for k, tok in enumerate(row) if tok in stops), len(row))
            out.append(f + row[:cut])
        return out

    def _generate_rows(self, ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        import numpy as np
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        size = 1 if self._exact else self.batch_size
        budget = self.max_len - max_new_tokens
        out: list[list[int] | None] = [None] * len(ids)
        bar = tqdm(total=len(ids), desc="lctx generate", disable=not self.progress,
                   leave=False)
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            rows += [rows[-1]] * (size - len(rows))  # greedy copies finish with their original
            longest = max(len(ids[i]) for i in rows)
            t = longest if self._exact else bucket_length(longest, budget, self.min_bucket)
            prompt_BT = np.full((size, t), self.tokenizer.pad_id, np.int32)
            for r, i in enumerate(rows):
                prompt_BT[r, :len(ids[i])] = ids[i]
            lengths_B = np.array([len(ids[i]) for i in rows], np.int32)
            toks_BM = self._decode(prompt_BT, lengths_B, max_new_tokens)
            for r, i in enumerate(rows[:len(order[start:start + size])]):
                row = toks_BM[r].tolist()
                cut = next((k for k, tok in enumerate(row) if tok in self.tokenizer.eos_ids),
                           len(row))
                out[i] = row[:cut]
            bar.update(len(order[start:start + size]))
        bar.close()
        return out

    def _batches(self, lengths: list[int], budget: int):
        """(row indices, static width) batches sorted by length and bucketed like generation;
        a short last batch repeats its last row (callers keep the first results only)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        size = 1 if self._exact else self.batch_size
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            rows += [rows[-1]] * (size - len(rows))  # one compiled shape per bucket
            longest = max(lengths[i] for i in rows)
            yield rows, (longest if self._exact else
                         bucket_length(longest, budget, self.min_bucket))

    def _first_tokens(self, ids: list[list[int]], barred: Sequence[int]) -> list[int]:
        """The greedy next token after each prompt among the ids not in `barred`."""
        import numpy as np

        from evals.runners import lctx_logits
        out = [0] * len(ids)
        for rows, width in self._batches([len(x) for x in ids], self.max_len):
            logits_BV = np.array(lctx_logits.next_token_logits(
                self.model, [ids[i] for i in rows], pad_id=self.tokenizer.pad_id, width=width,
                mesh=self.mesh))
            logits_BV[:, list(barred)] = -float("inf")
            for r, i in enumerate(rows):
                out[i] = int(logits_BV[r].argmax())
        return out

    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
                      ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is it the greedy continuation) per pair of token
        lists, batched (lm-evaluation-harness's `loglikelihood`). Each pair must fit the
        window: len(context) + len(continuation) - 1 <= max_len."""
        from evals.runners import lctx_logits
        pairs = [(list(map(int, c)), list(map(int, x))) for c, x in pairs]
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        lengths = [len(c) + len(x) - 1 for c, x in pairs]
        for i, (n, (c, x)) in enumerate(zip(lengths, pairs)):
            if not c or not x or n > self.max_len:
                raise ValueError(f"pair {i}: context {len(c)} + continuation {len(x)} tokens "
                                 f"(both >= 1) must fit the window ({self.max_len} + 1)")
        for rows, width in self._batches(lengths, self.max_len):
            longest = max(len(pairs[i][1]) for i in rows)
            got = lctx_logits.continuation_logprobs(
                self.model, [pairs[i] for i in rows], pad_id=self.tokenizer.pad_id,
                width=width, n_scored=1 << max(0, math.ceil(math.log2(longest))),
                mesh=self.mesh)
            for i, g in zip(rows, got):
                out[i] = g
        return out

    def _decode(self, prompt_BT, lengths_B, max_new_tokens: int):
        import jax
        import numpy as np

        from lctx import generate as gen_lib
        # eot stops the loop early once every row emitted it; other eos ids are cut on host.
        eos = self.tokenizer.eot_id
        if self.mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P
            rep = NamedSharding(self.mesh, P())
            prompt_BT, lengths_B = jax.device_put(prompt_BT, rep), jax.device_put(lengths_B, rep)
        toks_BM, _ = gen_lib.generate(self.model, prompt_BT, lengths_B,
                                      max_new_tokens=max_new_tokens, eos_id=eos,
                                      pad_id=eos if eos is not None else 0)
        return np.asarray(jax.device_get(toks_BM))

    def close(self) -> None:
        """Drops the model (device memory is freed with its arrays)."""
        self.model = None

    def __enter__(self) -> "LctxRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
