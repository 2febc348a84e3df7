"""`BeaconRunner`: greedy generation through activation beacons (`lctx.beacon_generate`).

`--runner=beacon --model=<beacon run>` evaluates a frozen base with its beacon adapters
(LoRA experts per ratio, one shared adapter, or the cloned attention) on the same prompts as
every other runner (RULER, InfiniteBench, LongBench). Each prompt is read window by window;
the ratio is chosen by `adapt-N` from its length (or forced with `ratio=`), the memory then
sits in front of the base model's KV cache for decoding.

`truncate=true` is the no-compression baseline on the same base weights: prompts longer than
the native window are cut in the middle (first and last halves kept, as LongBench and
InfiniteBench do) to `native_len - max_new_tokens` tokens and read with ratio 0 (exact full
attention). It also accepts a plain lctx run (no adapters); then `native_len=` (and
`window=`) must be given.

The model directory is an lctx run: workdir, `<workdir>/ckpt/<stage>` or a step directory.
A beacon run's config.json has a `beacon` section and its checkpoint state holds the adapter
under `params` and the base under `frozen`; a plain run's holds the base under `params`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from tqdm import tqdm

from evals.runners.base import PromptTooLongError
from evals.runners.lctx_runner import LctxRunner

log = logging.getLogger("evals.runners.beacon")


def load_beacon(path: str, *, stage: str | None = None, step: int | None = None,
                attn_impl: str = "blockwise", block: int = 512, **beacon_overrides):
    """(BeaconModel, meta) of a beacon run on disk (`lctx.run`), or of a plain run with a zero
    adapter when `beacon_overrides` give at least native_len (truncation / ratio 0 only)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from lctx import beacon as rules
    from lctx import beacon_train
    from lctx import run as run_lib
    from lctx.beacon_model import BeaconModel
    from lctx.model import Llama
    run, path_stage, path_step = run_lib.locate(path)
    found = run.latest(stage or path_stage)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint under {run.ckpt_root}; train first")
    step = found.step if (step if step is not None else path_step) is None else int(
        step if step is not None else path_step)
    step_dir = os.path.join(found.directory, str(step))
    with run.checkpoints(found.stage, async_save=False) as mgr:
        meta = mgr.read_meta(step)
    mcfg = run_lib.model_config(run.cfg, run.stage(found.stage).rope_dict,
                                attn_impl=attn_impl, block_q=block, block_k=block)
    section = run.cfg.beacon.to_dict() if run.cfg.get("beacon") else {}
    trained = bool(section)
    if not trained and "native_len" not in beacon_overrides:
        raise rules.BeaconError(
            f"{path}: this checkpoint has no beacon adapter (its config.json has no 'beacon' "
            "section); train one (configs/beacon_*.py), or evaluate the base by truncation "
            "with --runner_arg truncate=true --runner_arg native_len=N")
    section.update(beacon_overrides)
    if not trained:
        section.setdefault("window", max(1, section["native_len"] // 4))
        section.setdefault("ratios", "1")
    bcfg = beacon_train.beacon_config(section)
    abstract = nnx.eval_shape(lambda: BeaconModel(Llama(mcfg, rngs=nnx.Rngs(0)), bcfg,
                                                  eos_id=0, rngs=nnx.Rngs(1)))
    graphdef, adapter, frozen = beacon_train.split_model(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), t)
    item = ({"params": target(adapter), "frozen": target(frozen)} if trained else
            {"params": target(frozen["base"])})
    try:
        got = ocp.PyTreeCheckpointer().restore(
            os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
                item=item, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item)))
    except (ValueError, KeyError) as e:
        raise rules.BeaconError(
            f"{step_dir}: the checkpoint does not hold the adapter bank its config describes "
            f"(adapter={bcfg.adapter}, ratios={bcfg.ratios}, rank={bcfg.rank}): {e}") from e
    if trained:
        model = nnx.merge(graphdef, got["params"], got["frozen"])
    else:
        frozen["base"] = got["params"]
        zero = jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype), adapter)
        model = nnx.merge(graphdef, zero, frozen)
    return model, dict(meta, workdir=run.workdir, trained=trained, tokenizer=run.tokenizer)


class BeaconRunner(LctxRunner):
    """Runner over a beacon model (contract: `evals.runners.base`; module docstring).

    Args:
      model: an lctx run (workdir, ckpt/<stage>, or a step directory).
      tokenizer: tokenizer path (default: the run's).
      ratio: force one compression ratio for every prompt (must be served by the run).
      truncate: the truncation baseline (middle cut to the native window, ratio 0).
      attn_impl, block: attention of the raw rows ('blockwise' or 'dense') and block length.
      stage, step: which checkpoint (default: the latest of the last stage).
      progress: a tqdm bar per `generate` call.
      **beacon: BeaconConfig overrides (e.g. headroom, overflow='largest'; native_len and
        window for a plain run with truncate=true).
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, ratio: int | None = None,
                 truncate: bool = False, attn_impl: str = "blockwise", block: int = 512,
                 stage: str | None = None, step: int | None = None, progress: bool = True,
                 **beacon: Any):
        from lctx import beacon as rules
        from lctx.tokenizer import load_tokenizer

        from evals.ruler.text import SpecialTextTokenizer
        from evals.tokens import special_ids
        if attn_impl not in ("blockwise", "dense"):
            raise ValueError(f"attn_impl={attn_impl!r}: use 'blockwise' or 'dense'")
        if not os.path.isdir(model):
            raise FileNotFoundError(f"model={model!r} is not an lctx run directory")
        self.model, self.meta = load_beacon(model, stage=stage, step=step, attn_impl=attn_impl,
                                            block=block, **beacon)
        if not self.meta["trained"] and not truncate:
            raise rules.BeaconError(f"{model}: a plain run has no adapter; use truncate=true")
        self.bcfg, self.cfg = self.model.bcfg, self.model.base.cfg
        if ratio is not None:
            ratio = int(ratio)
            if ratio:
                self.bcfg.expert(ratio)  # the checkpoint must hold an expert for it
        self.ratio, self.truncate, self.progress, self.mesh = ratio, bool(truncate), progress, None
        self.tokenizer = load_tokenizer(tokenizer or self.meta["tokenizer"])
        if self.tokenizer.vocab_size > self.cfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} ids but the model's "
                             f"vocab_size is {self.cfg.vocab_size}")
        self._encoder = SpecialTextTokenizer(self.tokenizer)
        self._special_ids = special_ids(self.tokenizer)
        top = rules.capacity(max(self.bcfg.ratios), self.bcfg.native_len, self.bcfg.window)
        # The window a prompt may fill: the native one when truncating, else what the largest
        # ratio covers less the generation headroom the ratio rule reserves.
        self.max_len = 10 ** 12 if self.truncate else top - self.bcfg.headroom
        self.max_model_len = self.max_len
        self.used: dict[int, int] = {}  # ratio -> prompts served (for reports)
        log.info("beacon runner: %s, adapter %s, ratios %s, window %d, native %d%s", model,
                 self.bcfg.adapter, self.bcfg.ratios, self.bcfg.window, self.bcfg.native_len,
                 ", truncation baseline" if self.truncate else "")

    def _cut(self, ids: list[int], max_new_tokens: int) -> list[int]:
        keep = self.bcfg.native_len - max(max_new_tokens, self.bcfg.headroom)
        if keep < 2:
            raise PromptTooLongError(f"native_len={self.bcfg.native_len} leaves no room for a "
                                     f"prompt with {max_new_tokens} new tokens")
        if len(ids) <= keep:
            return ids
        half = keep // 2
        return ids[:half] + ids[len(ids) - (keep - half):]

    def generate_ids(self, ids: list[list[int]], max_new_tokens: int, *,
                     stop_ids: Sequence[int] = (), min_new_tokens: int = 0
                     ) -> list[list[int]]:
        """Greedy ids per prompt, cut after the first end id (eos or `stop_ids`); with
        `min_new_tokens=1` the first token is never an end id."""
        from lctx import beacon as rules
        from lctx import beacon_generate as bgen
        ends = sorted(set(self.tokenizer.eos_ids) | set(stop_ids))
        out = []
        for p in tqdm(ids, desc="beacon generate", disable=not self.progress, leave=False):
            ratio = 0 if self.truncate else self.ratio
            prompt = self._cut(p, max_new_tokens) if self.truncate else p
            try:
                got, info = bgen.generate(self.model, prompt, max_new_tokens=max_new_tokens,
                                          eos_ids=ends, ratio=ratio,
                                          bar_first=ends if min_new_tokens else ())
            except rules.BeaconError as e:
                raise PromptTooLongError(str(e)) from e
            self.used[info["ratio"]] = self.used.get(info["ratio"], 0) + 1
            cut = next((k for k, t in enumerate(got) if t in self.tokenizer.eos_ids), len(got))
            got = got[:cut]
            cut = next((k + 1 for k, t in enumerate(got) if t in set(stop_ids)), len(got))
            out.append(got[:cut])
        return out

    def loglikelihood(self, pairs):
        raise NotImplementedError("the beacon runner serves generation only (RULER, "
                                  "InfiniteBench, LongBench); use --runner=lctx for lm-eval")
