"""A frozen `lctx.model.Llama` that reads long inputs window by window through beacon tokens.

One `step` processes one full window of W raw tokens plus k = W / ratio beacon tokens
(`lctx.beacon` has the layout, mask and positions). Raw tokens use the frozen base weights;
beacon tokens use the base weights plus the adapter chosen by `expert` (a LoRA expert per
ratio, one shared LoRA, or a full clone), and a trainable beacon embedding initialised from
the eos embedding. The beacons' keys and values are written, un-rotated, into a static-shape
memory; every step rotates the memory keys at the step's positions (slot j at position j), as
the reference does. Ratio 0 writes the raw keys and values instead (no compression).

Attention of a step, split by row kind so the plain kernels stay untouched:
* raw rows: `lctx.attention` (dense or blockwise) over [memory | raw] with id masking
  (empty memory slots get segment 0, so nothing sees them);
* beacon rows (k <= W/2 of them): a dense masked attention over [memory | raw | beacons]
  with the step-expansion mask of `lctx.beacon.step_mask`.
`step(..., dense=True)` instead runs every row through the full golden mask (tests).

Axes: L layers, B batch, W window, k beacons, T = W + k step rows, M memory slots,
S keys, D model dim, N query heads, K kv heads, G = N / K, H head dim.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lctx import attention as attn_lib
from lctx import beacon as rules
from lctx import lora
from lctx import rope as rope_lib

_F32 = jnp.float32


class Memory(NamedTuple):
    """Un-rotated keys and values of the memory, static capacity M; slots [0, length) hold
    memory (beacons, or raw tokens for ratio 0) and are at positions 0..length-1."""
    k_LBMKH: jax.Array
    v_LBMKH: jax.Array
    length: jax.Array  # int32 scalar


def masked_attention(q_BTNH, k_BSKH, v_BSKH, allowed_TS, scale: float):
    """Dense GQA attention with an explicit boolean mask shared by the batch; fp32 softmax.

    Every row must allow at least one key (beacon rows always see themselves).
    """
    b, t, n, h = q_BTNH.shape
    kh = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(b, t, kh, n // kh, h)
    s_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BSKH, preferred_element_type=_F32)
    s_BKGTS = jnp.where(allowed_TS, s_BKGTS * scale, -jnp.inf)
    p_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1)
    o_BTKGH = jnp.einsum("bkgts,bskh->btkgh", p_BKGTS.astype(v_BSKH.dtype), v_BSKH,
                         preferred_element_type=_F32)
    return o_BTKGH.reshape(b, t, n, h).astype(q_BTNH.dtype)


class BeaconModel(nnx.Module):
    """Base model + beacon embedding + adapter bank (see the module docstring).

    Args:
      base: the frozen `lctx.model.Llama`.
      cfg: `lctx.beacon.BeaconConfig`.
      eos_id: the eos token whose embedding initialises the beacon embedding (reference).
      rngs: for the LoRA A matrices.
    """

    def __init__(self, base, cfg: rules.BeaconConfig, *, eos_id: int, rngs: nnx.Rngs):
        mc = base.cfg
        if not 0 <= eos_id < mc.vocab_size:
            raise rules.BeaconError(f"eos_id={eos_id} is outside the vocabulary [0, "
                                    f"{mc.vocab_size}).")
        self.base, self.bcfg, self.eos_id = base, cfg, int(eos_id)
        kind = "clone" if cfg.adapter == "clone" else "lora"
        self.bank = lora.Bank(mc, kind=kind, n=cfg.n_experts, rank=cfg.rank, alpha=cfg.alpha,
                              targets=cfg.targets, rngs=rngs)
        n_emb = cfg.n_experts if cfg.embed_per_expert else 1
        eos_D = base.embed[...][eos_id].astype(jnp.float32)  # a trained fp32 master
        self.beacon_embed = lora.adapter_param(jnp.tile(eos_D[None], (n_emb, 1)), (None, "embed"))

    def n_adapter_params(self) -> int:
        """Trainable parameters: the bank plus the beacon embeddings."""
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, lora.AdapterParam)))

    def init_memory(self, batch: int, capacity: int) -> Memory:
        """An empty memory of `capacity` slots per layer and row."""
        c = self.base.cfg
        shape = (c.n_layers, batch, capacity, c.n_kv_heads, c.head_dim)
        return Memory(jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype),
                      jnp.zeros((), jnp.int32))

    def step(self, tokens_BW, memory: Memory, *, ratio: int, expert, dense: bool = False):
        """One full window: final-normed hidden states of its raw tokens [B, W, D] and the
        memory with this window's beacons (ratio 0: raw keys and values) appended.

        Args:
          tokens_BW: int token ids of the window.
          memory: the memory so far (static capacity; must hold k more slots).
          ratio: the window's compression ratio (static; 0 = none).
          expert: adapter index (int or traced int32 scalar; `BeaconConfig.expert(ratio)`).
          dense: run every row through the full golden mask instead of the split kernels.
        """
        c, w = self.base.cfg, tokens_BW.shape[1]
        if ratio and w % ratio:
            raise rules.BeaconError(f"ratio {ratio} does not divide the window {w}.")
        k = rules.beacons_per_window(w, ratio) if ratio else 0
        b, m_cap = tokens_BW.shape[0], memory.k_LBMKH.shape[2]
        m = memory.length
        dt = c.dtype
        x_BTD = self.base.embed[...].astype(dt)[tokens_BW]
        e_emb = expert if self.bcfg.embed_per_expert else 0
        if k:
            beacon_D = self.beacon_embed[...][e_emb].astype(dt)
            x_BTD = jnp.concatenate([x_BTD, jnp.broadcast_to(beacon_D, (b, k, c.d_model))], 1)
        pos_T = rules.step_positions(m, w, ratio, xp=jnp)
        slots_M = jnp.arange(m_cap, dtype=jnp.int32)
        seq_len = m + w + 1  # HF's length for length-dependent RoPE: max position + 1
        cos_TK, sin_TK = rope_lib.cos_sin(c.rope, pos_T[None], c.head_dim, seq_len=seq_len)
        cos_MK, sin_MK = rope_lib.cos_sin(c.rope, slots_M[None], c.head_dim, seq_len=seq_len)
        mask_TS = rules.step_mask(m, w, ratio, capacity=m_cap, xp=jnp)
        impl = c.attn_impl if c.attn_impl in ("dense", "blockwise") else "blockwise"
        attend = attn_lib.get_attention(impl, block_q=c.block_q, block_k=c.block_k,
                                        kernel=c.attn_kernel)
        ones_BW = jnp.ones((b, w), jnp.int32)
        raw_ids = (ones_BW, jnp.concatenate([jnp.broadcast_to(slots_M < m, (b, m_cap)).astype(
            jnp.int32), ones_BW], 1), jnp.broadcast_to(pos_T[:w], (b, w)),
            jnp.concatenate([jnp.broadcast_to(slots_M, (b, m_cap)),
                             jnp.broadcast_to(pos_T[:w], (b, w))], 1))
        bank, scale = self.bank.layer(), self.bank.scale
        kind = self.bank.kind
        graphdef, layer_state = nnx.split(self.base.layers)

        def layer(x_BTD, xs):
            state_l, bank_l, mk_BMKH, mv_BMKH = xs
            blk = nnx.merge(graphdef, state_l)
            at = blk.attn
            h_BTD = blk.attn_norm(x_BTD)
            proj = {t: jnp.einsum("btd,dnh->btnh", h_BTD, getattr(at, f"w{t}")[...].astype(dt))
                    for t in ("q", "k", "v")}
            if k:  # beacon rows: base projection plus the adapter's
                for t in proj:
                    d = lora.delta_in(bank_l, kind, scale, t, h_BTD[:, w:], expert, dt)
                    if d is not None:
                        proj[t] = jnp.concatenate([proj[t][:, :w], proj[t][:, w:] + d], 1)
            q_BTNH, k_BTKH, v_BTKH = proj["q"], proj["k"], proj["v"]
            new_k, new_v = (k_BTKH[:, w:], v_BTKH[:, w:]) if k else (k_BTKH, v_BTKH)
            q_BTNH = rope_lib.apply_rope(q_BTNH, cos_TK, sin_TK)
            keys_BSKH = jnp.concatenate([rope_lib.apply_rope(mk_BMKH, cos_MK, sin_MK),
                                         rope_lib.apply_rope(k_BTKH, cos_TK, sin_TK)], 1)
            vals_BSKH = jnp.concatenate([mv_BMKH, v_BTKH], 1)
            if dense:
                ctx_BTNH = masked_attention(q_BTNH, keys_BSKH, vals_BSKH, mask_TS, at.scale)
            else:
                ctx_BTNH = attend(q_BTNH[:, :w], keys_BSKH[:, :m_cap + w],
                                  vals_BSKH[:, :m_cap + w], *raw_ids, causal=True,
                                  scale=at.scale)
                if k:
                    ctx_b = masked_attention(q_BTNH[:, w:], keys_BSKH, vals_BSKH,
                                             mask_TS[w:], at.scale)
                    ctx_BTNH = jnp.concatenate([ctx_BTNH, ctx_b], 1)
            out_BTD = jnp.einsum("btnh,nhd->btd", ctx_BTNH, at.wo[...].astype(dt))
            if k:
                d = lora.delta_out(bank_l, kind, scale, ctx_BTNH[:, w:], expert, dt)
                if d is not None:
                    out_BTD = jnp.concatenate([out_BTD[:, :w], out_BTD[:, w:] + d], 1)
            x_BTD = x_BTD + out_BTD
            x_BTD = x_BTD + blk.mlp(blk.mlp_norm(x_BTD))
            mk_BMKH = jax.lax.dynamic_update_slice_in_dim(mk_BMKH, new_k.astype(mk_BMKH.dtype),
                                                          m, axis=1)
            mv_BMKH = jax.lax.dynamic_update_slice_in_dim(mv_BMKH, new_v.astype(mv_BMKH.dtype),
                                                          m, axis=1)
            return x_BTD, (mk_BMKH, mv_BMKH)

        x_BTD, (k_LBMKH, v_LBMKH) = jax.lax.scan(
            layer, x_BTD, (layer_state, bank, memory.k_LBMKH, memory.v_LBMKH))
        hidden_BWD = self.base.final_norm(x_BTD[:, :w])
        added = k if k else w
        return hidden_BWD, Memory(k_LBMKH, v_LBMKH, m + added)
