"""The training library: a pure, module-level `train_step` and the multi-stage loop.

State is a dict pytree {params, opt, step, rng}: fp32 master weights (the model computes in
`model.dtype`), the optax state, this stage's step and a PRNG key. `train_step(state, batch)`
is jitted once per stage with shardings and the state donated; metrics are a flat dict with
'/' keys, fetched one step late so the host never blocks the device.

Resume order (once, here): workdir checkpoint > ckpt.resume_from > ckpt.init_from (HF) > scratch.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lctx import checkpoint as ckpt_lib
from lctx import data as data_lib
from lctx import optim


class NonFiniteLoss(RuntimeError):
    """Raised after a non-finite loss: the state was saved under <workdir>/nonfinite/."""


# ---- the model, its sharding and its cost ------------------------------------------------

def model_config(cfg, rope_cfg) -> Any:
    """The frozen `lctx.model.ModelConfig` of a run config with a stage's RoPE."""
    from lctx import model as model_lib
    from lctx import rope as rope_lib
    m, a = cfg.model, cfg.attn
    rope = rope_lib.make_rope(**rope_cfg.to_dict())
    return model_lib.ModelConfig(
        vocab_size=m.vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads, head_dim=m.head_dim, mlp_dim=m.mlp_dim, norm_eps=m.norm_eps,
        tie_embeddings=m.tie_embeddings, max_seq_len=m.max_seq_len, rope=rope,
        attn_impl=a.impl, block_q=a.block_q, block_k=a.block_k, param_dtype=m.param_dtype,
        dtype=m.dtype, scan_layers=m.scan_layers, remat=m.remat)


def build_model(mcfg, mesh, seed: int):
    """The model with its parameters initialised straight into their mesh shardings."""
    from lctx import model as model_lib
    from lctx import sharding
    return sharding.init_sharded(lambda: model_lib.Llama(mcfg, rngs=nnx.Rngs(seed)), mesh)


def place_state(state: dict, mesh) -> dict:
    """Optimizer moments take their parameter's sharding; scalars are replicated."""
    from lctx import sharding
    return sharding.shard_train_state(state, mesh)


def batch_sharding(mesh):
    """Rows over the data-parallel axes, T over the context axis (zigzag-ordered by data)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    rows = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    return NamedSharding(mesh, P(rows, "context" if "context" in mesh.shape else None))


def flops_per_token(mcfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params + causal attention 6 x L x N x H x T."""
    emb = mcfg.vocab_size * mcfg.d_model  # the embedding lookup is a gather, not a matmul
    dense = 6.0 * (mcfg.n_params() - emb)
    return dense + 6.0 * mcfg.n_layers * mcfg.n_heads * mcfg.head_dim * seq_len


def _micro_loss(params, graphdef, batch, loss_chunk):
    """Sum over answer tokens of the next-token cross-entropy (never builds [T, V] logits)."""
    from lctx import loss as loss_lib
    model = nnx.merge(graphdef, params)
    hidden_BTD = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return loss_lib.chunked_cross_entropy_sum(hidden_BTD, model.unembedding(), batch["targets"],
                                              batch["weights"], chunk=loss_chunk)


def train_step(state: dict, batch: dict, *, graphdef: Any, tx: optax.GradientTransformation,
               schedule: optim.Schedule, grad_accum: int, loss_chunk: int) -> tuple[dict, dict]:
    """One optimizer step over a global batch, split into `grad_accum` micro-batches.

    The loss is the sum of answer-token cross-entropies divided by the global number of
    answer tokens in the whole batch, so micro-batching and sharding do not change it.
    """
    def split(x):
        return x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    micro = jax.tree.map(split, batch)
    grad_fn = jax.value_and_grad(_micro_loss)

    def body(carry, mb):
        g_acc, l_acc = carry
        l_sum, g = grad_fn(state["params"], graphdef, mb, loss_chunk)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l_sum), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (g_sum, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), micro)
    n_tok = jnp.maximum(batch["weights"].sum(), 1.0)
    grads = jax.tree.map(lambda g: g / n_tok, g_sum)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    lr = schedule(state["step"])
    params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state["params"], updates)
    metrics = {"train/loss": loss_sum / n_tok, "train/grad_norm": optax.global_norm(grads),
               "train/lr": lr, "train/loss_tokens": batch["weights"].sum(),
               "train/param_norm": optax.global_norm(params)}
    new = {"params": params, "opt": opt, "step": state["step"] + 1,
           "rng": jax.random.fold_in(state["rng"], state["step"])}
    return new, metrics


def eval_step(params, batch, *, graphdef, loss_chunk):
    l_sum = _micro_loss(params, graphdef, batch, loss_chunk)
    return {"eval/loss_sum": l_sum, "eval/loss_tokens": batch["weights"].sum()}


class StageRunner:
    """Builds model, optimizer, data and jitted step for one stage and runs it."""

    def __init__(self, cfg, name: str, workdir: str, mesh, writer: MetricWriter):
        self.cfg, self.name, self.workdir, self.mesh, self.writer = cfg, name, workdir, mesh, writer
        self.scfg = cfg.stages[name]
        self.steps = int(self.scfg.steps)
        if self.scfg.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"stages.{name}.seq_len={self.scfg.seq_len} exceeds "
                             f"model.max_seq_len={cfg.model.max_seq_len}; raise the model "
                             "maximum or shorten the stage")
        if cfg.data.batch_size % cfg.opt.grad_accum:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by "
                             f"opt.grad_accum={cfg.opt.grad_accum}")
        self.mcfg = model_config(cfg, self.scfg.rope)
        self.model = build_model(self.mcfg, mesh, cfg.seed)
        self.graphdef, params = nnx.split(self.model, nnx.Param)
        self.tx = optim.make_tx(cfg.opt)
        lr = self.scfg.lr if self.scfg.lr > 0 else cfg.opt.lr
        warm = self.scfg.warmup_steps if self.scfg.warmup_steps >= 0 else cfg.opt.warmup_steps
        self.schedule = optim.make_schedule(lr=lr, warmup_steps=warm, total_steps=self.steps,
                                            kind=cfg.opt.schedule, end_lr_frac=cfg.opt.end_lr_frac)
        self.state = {"params": params, "opt": self.tx.init(params),
                      "step": jnp.zeros((), jnp.int32),
                      "rng": jax.random.key_data(jax.random.key(cfg.seed))}
        self.state = place_state(self.state, mesh)
        self.batch_sharding = batch_sharding(mesh)
        self._ckpts = None  # created at the first save: a failed start leaves no directory
        self.data_stats = data_lib.Stats()
        paths, tok = data_lib.build_source(cfg.data, workdir)
        if self.scfg.data_path:
            paths = data_lib.resolve_paths(self.scfg.data_path)
        self.render = data_lib.render_fn_from_tokenizer(tok or cfg.ckpt.init_from)
        self.tokenizer_path = tok or cfg.ckpt.init_from
        ctx = int(mesh.shape.get("context", 1))
        self.dataset = data_lib.make_dataset(
            paths, self.render, seq_len=self.scfg.seq_len, batch_size=cfg.data.batch_size,
            seed=cfg.data.seed, pack=cfg.data.pack, packing_bins=cfg.data.packing_bins,
            overlong=cfg.data.overlong, context_shards=ctx,
            process_index=jax.process_index(), process_count=jax.process_count(),
            stats=self.data_stats, read_threads=cfg.data.read_threads,
            read_buffer=cfg.data.read_buffer)
        self.data_iter = iter(self.dataset)
        # Read one batch now so bad data fails before anything is written.
        self._peeked = next(self.data_iter)
        step_fn = functools.partial(train_step, graphdef=self.graphdef, tx=self.tx,
                                    schedule=self.schedule, grad_accum=cfg.opt.grad_accum,
                                    loss_chunk=cfg.opt.loss_chunk)
        shard = jax.tree.map(lambda x: x.sharding, self.state)
        self.step_fn = jax.jit(step_fn, in_shardings=(shard, self.batch_sharding),
                               out_shardings=(shard, None), donate_argnums=(0,))
        self.flops_per_token = flops_per_token(self.mcfg, self.scfg.seq_len)
        self.last_metrics: dict[str, float] = {}

    # ---- state sources ---------------------------------------------------------------
    @property
    def ckpts(self) -> ckpt_lib.StageCheckpoints:
        if self._ckpts is None:
            self._ckpts = ckpt_lib.StageCheckpoints(
                os.path.join(self.workdir, "ckpt"), self.name, keep=self.cfg.ckpt.keep,
                async_save=self.cfg.ckpt.async_save)
        return self._ckpts

    def close(self) -> None:
        if self._ckpts is not None:
            self._ckpts.close()

    def restore_own(self, step: int) -> None:
        self._peeked = None  # the iterator moves to the checkpoint's position
        self.state, meta = self.ckpts.restore(step, ckpt_lib.abstract(self.state), self.data_iter)
        logging.info("resume: %s step %d from this workdir", self.name, step)

    def start_from_previous(self, prev: str, prev_step: int) -> None:
        prev_ckpts = ckpt_lib.StageCheckpoints(os.path.join(self.workdir, "ckpt"), prev,
                                               async_save=False)
        st, _ = prev_ckpts.restore(prev_step, ckpt_lib.abstract(self.state))
        prev_ckpts.close()
        self._adopt(st, carry_opt=self.scfg.carry_opt_state)
        logging.info("stage %s starts from %s step %d (optimizer state %s)", self.name, prev,
                     prev_step, "carried" if self.scfg.carry_opt_state else "fresh")

    def start_from_external(self, directory: str) -> None:
        st, meta = ckpt_lib.load_external(directory, ckpt_lib.abstract(self.state))
        self._adopt(st, carry_opt=self.scfg.carry_opt_state)
        logging.info("resume_from: %s (%s step %s)", directory, meta.get("stage"), meta.get("step"))

    def start_from_hf(self, directory: str) -> None:
        from lctx import hf
        _, model = hf.load_hf(directory, mesh=self.mesh)
        params = nnx.state(model, nnx.Param)
        want = jax.tree.map(lambda x: x.shape, self.state["params"])
        got = jax.tree.map(lambda x: x.shape, params)
        if want != got:
            raise ValueError(f"ckpt.init_from={directory!r}: its shapes do not match cfg.model "
                             "(vocab_size, d_model, n_layers, heads, mlp_dim); set the model "
                             "section to the HF config.json's values")
        self._adopt({"params": params}, carry_opt=False)
        logging.info("init_from: HF weights %s", directory)

    def _adopt(self, st: dict, carry_opt: bool) -> None:
        params = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                              st["params"], self.state["params"])
        opt = st["opt"] if carry_opt else self.tx.init(params)
        self.state = place_state({"params": params, "opt": opt, "step": self.state["step"],
                                  "rng": self.state["rng"]}, self.mesh)

    # ---- loop ------------------------------------------------------------------------
    def save(self, step: int, finished: bool = False) -> None:
        meta = {"stage": self.name, "step": step, "steps": self.steps, "finished": finished,
                "seq_len": int(self.scfg.seq_len), "rope": self.scfg.rope.to_dict(),
                "data": self.data_stats.as_dict()}
        self.ckpts.save(step, self.state, self.data_iter, meta, force=finished)

    def next_batch(self) -> dict:
        local, self._peeked = (self._peeked, None) if self._peeked is not None else (
            next(self.data_iter), None)
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in local.items()}

    def run(self) -> None:
        """Runs the remaining steps of this stage, saving periodically and at the end."""
        start = int(jax.device_get(self.state["step"]))
        pending = None
        bar = self.writer.progress(self.name, start, self.steps)
        for step in range(start, self.steps):
            batch = self.next_batch()
            self.writer.start_timer()
            self.state, metrics = self.step_fn(self.state, batch)
            if pending is not None:  # one step late: the device is already on `step`
                self._report(*pending, bar)
            pending = (step, metrics, self.writer.tokens(batch))
            ev = self.cfg.eval.every_steps
            if ev > 0 and ((step + 1) % ev == 0 or step + 1 == self.steps):
                self.evaluate(step)
            if (step + 1) % self.cfg.ckpt.every_steps == 0 and step + 1 < self.steps:
                self._report(*pending, bar)
                pending = None
                self.save(step + 1)
        if pending is not None:
            self._report(*pending, bar)
        bar.close()
        self.save(self.steps, finished=True)
        self.ckpts.wait()
        stats = self.data_stats.as_dict()
        logging.info("stage %s done: %d steps; data (this process): %s", self.name,
                     self.steps, stats)
        if stats["truncated"] or stats["dropped"]:
            logging.warning("stage %s: %d documents truncated, %d dropped (longer than %d "
                            "tokens; data.overlong=%s)", self.name, stats["truncated"],
                            stats["dropped"], self.scfg.seq_len, self.cfg.data.overlong)

    def evaluate(self, step: int) -> None:
        """Loss over eval.batches fixed batches of eval.path (held out), or of the training
        data in another order when eval.path is empty; written to metrics.jsonl."""
        if not hasattr(self, "_eval_batches"):
            ecfg = self.cfg.eval
            paths = (data_lib.resolve_paths(ecfg.path) if ecfg.path else
                     data_lib.resolve_paths(self.scfg.data_path) if self.scfg.data_path else
                     data_lib.build_source(self.cfg.data, self.workdir)[0])
            it = iter(data_lib.make_dataset(
                paths, self.render, seq_len=self.scfg.seq_len,
                batch_size=self.cfg.data.batch_size, seed=self.cfg.data.seed + 1,
                pack=self.cfg.data.pack, packing_bins=self.cfg.data.packing_bins,
                overlong=self.cfg.data.overlong, context_shards=int(self.mesh.shape["context"]),
                process_index=jax.process_index(), process_count=jax.process_count(),
                read_threads=self.cfg.data.read_threads, read_buffer=self.cfg.data.read_buffer))
            self._eval_batches = [
                {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                 for k, v in next(it).items()} for _ in range(ecfg.batches)]
            self._eval_fn = jax.jit(functools.partial(eval_step, graphdef=self.graphdef,
                                                      loss_chunk=self.cfg.opt.loss_chunk))
        sums = [jax.device_get(self._eval_fn(self.state["params"], b))
                for b in self._eval_batches]
        loss = sum(float(m["eval/loss_sum"]) for m in sums) / max(
            1.0, sum(float(m["eval/loss_tokens"]) for m in sums))
        self.writer.write_eval(self.name, step, loss)

    def _report(self, step: int, metrics: dict, tokens: dict, bar) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["train/loss"]):
            d = os.path.join(self.workdir, "nonfinite")
            nf = ckpt_lib.StageCheckpoints(d, self.name, async_save=False)
            nf.save(step + 1, self.state, None, {"stage": self.name, "step": step + 1,
                                                 "nonfinite": True})
            nf.close()
            self.close()
            raise NonFiniteLoss(
                f"stage {self.name} step {step}: loss is {m['train/loss']} (grad norm "
                f"{m['train/grad_norm']}). The state after this step is saved in {d}; the "
                "last good checkpoint is in ckpt/. Lower opt.lr, raise opt.warmup_steps or "
                "check the data, then rerun (it resumes from the last good checkpoint).")
        self.last_metrics = m
        self.writer.write(self.name, step, m, tokens, self.flops_per_token, bar)

    def export(self) -> None:
        """Writes the stage's final weights as an HF directory with this stage's RoPE."""
        if not self.scfg.export_hf:
            return
        from lctx import hf
        out = os.path.join(self.workdir, "hf", self.name)
        nnx.update(self.model, self.state["params"])
        hf.export_hf(self.model, out, tokenizer=self.tokenizer_path)
        logging.info("stage %s: HF export (rope %s) in %s", self.name,
                     self.scfg.rope.to_dict(), out)


# ---- metrics ---------------------------------------------------------------------------

class MetricWriter:
    """Appends one JSON line per logged step to <workdir>/metrics.jsonl (process 0) and
    drives a tqdm bar. Adds tokens/s, step time, model FLOPs/token and MFU."""

    def __init__(self, workdir: str, every: int, peak_tflops: float, progress: bool):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.every, self.peak, self.show = max(1, every), peak_tflops * 1e12, progress
        self.main = jax.process_index() == 0
        self._t0 = None
        self._last = None

    def progress(self, stage: str, start: int, total: int):
        import tqdm
        return tqdm.tqdm(total=total, initial=start, desc=f"stage {stage}", unit="step",
                         disable=not (self.show and self.main), dynamic_ncols=True)

    def start_timer(self) -> None:
        import time
        now = time.perf_counter()
        self._last, self._t0 = (now - self._t0) if self._t0 is not None else None, now

    def write_eval(self, stage: str, step: int, loss: float) -> None:
        import json
        logging.info("stage %s step %d: eval/loss %.4f", stage, step, loss)
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"stage": stage, "step": step, "eval/loss": loss}) + "\n")

    @staticmethod
    def tokens(batch: dict) -> dict:
        return {"tokens": int(np.prod(batch["inputs"].shape))}

    def write(self, stage: str, step: int, m: dict, tokens: dict, fpt: float, bar) -> None:
        import json
        # Time between consecutive dispatches: the steady-state step time.
        dt = self._last
        rec = {"stage": stage, "step": step, **m}
        if dt:
            tps = tokens["tokens"] / dt
            rec.update({"perf/step_time_s": dt, "perf/tokens_per_s": tps,
                        "perf/model_flops_per_token": fpt,
                        "perf/mfu": tps * fpt / (self.peak * jax.device_count())})
        bar.update(1)
        bar.set_postfix(loss=f"{m['train/loss']:.4f}", gnorm=f"{m['train/grad_norm']:.3g}")
        if self.main and (step % self.every == 0):
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


# ---- the run ---------------------------------------------------------------------------

def validate(cfg, stages: list[str]) -> None:
    """Checks what can be checked before anything is written; errors name field and fix."""
    if cfg.data.batch_size % cfg.opt.grad_accum:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by "
                         f"opt.grad_accum={cfg.opt.grad_accum}")
    for name in stages:
        st = cfg.stages[name]
        if st.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"stages.{name}.seq_len={st.seq_len} exceeds model.max_seq_len="
                             f"{cfg.model.max_seq_len}; raise the model maximum or shorten "
                             "the stage")
        if st.steps < 1:
            raise ValueError(f"stages.{name}.steps={st.steps} must be >= 1")
        if not cfg.data.builder:
            data_lib.resolve_paths(st.data_path or cfg.data.path)
    if not cfg.data.builder and not (cfg.data.tokenizer or cfg.ckpt.init_from):
        raise data_lib.DataError("data.tokenizer is empty and there is no ckpt.init_from to "
                                 "take the tokenizer from; set --config.data.tokenizer")


def save_config(cfg, workdir: str) -> None:
    """Writes config.json into the workdir atomically (process 0)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def train_and_evaluate(cfg, workdir: str) -> dict[str, Any]:
    """Runs every stage of `cfg` in `workdir`, resuming where a previous run stopped.

    Returns {stage: final metrics} for the stages run by this call.
    """
    from lctx import sharding
    stages = sorted(cfg.stages.keys())
    if not stages:
        raise ValueError("config has no stages: add cfg.stages.<name> = common.stage(...)")
    validate(cfg, stages)
    os.makedirs(workdir, exist_ok=True)
    # Slowest-varying first: context (ring) and tensor innermost, on the fastest links.
    mesh = sharding.make_mesh([(a, cfg.mesh[a]) for a in ("data", "fsdp", "context", "tensor")])
    logging.info("mesh: %s", dict(mesh.shape))
    save_config(cfg, workdir)
    writer = MetricWriter(workdir, cfg.log.every_steps, cfg.log.peak_tflops, cfg.log.progress)
    found = ckpt_lib.find_resume(os.path.join(workdir, "ckpt"), stages)
    first = 0 if found is None else stages.index(found.stage) + int(found.finished)
    results = {}
    for i in range(first, len(stages)):
        name = stages[i]
        with sharding.use_mesh(mesh):
            runner = StageRunner(cfg, name, workdir, mesh, writer)
            if found is not None and found.stage == name:
                runner.restore_own(found.step)  # 1. this workdir, this stage
            elif i > 0:
                prev = stages[i - 1]
                prev_step = ckpt_lib.StageCheckpoints(os.path.join(workdir, "ckpt"), prev,
                                                      async_save=False).latest_step()
                runner.start_from_previous(prev, prev_step)  # 1. this workdir, previous stage
            elif cfg.ckpt.resume_from:
                runner.start_from_external(cfg.ckpt.resume_from)  # 2. another run
            elif cfg.ckpt.init_from:
                runner.start_from_hf(cfg.ckpt.init_from)  # 3. HF weights
            else:
                logging.info("stage %s starts from scratch (seed %d)", name, cfg.seed)  # 4.
            runner.run()
            runner.export()
            results[name] = runner.last_metrics
            runner.close()
        found = None
    return results
