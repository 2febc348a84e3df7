"""Beacon rules against vectors built the reference's way (FlagEmbedding 0ad0dee), and counts."""
import numpy as np
import pytest

from lctx import beacon as rules
from lctx import lora
from lctx.model import ModelConfig

LLAMA2_7B = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                        head_dim=128, mlp_dim=11008)
LLAMA31_8B = ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                         n_kv_heads=8, head_dim=128, mlp_dim=14336)


def reference_step(m, window, ratio):
    """Mask and positions built as modeling_llama.py:1035-1145 does: a causal 4-D mask with m
    past keys, then the beacon rows overwritten (step-expansion, attend-previous)."""
    k = window // ratio if ratio else 0
    t = window + k
    mask = np.zeros((t, m + t), bool)
    for r in range(t):
        mask[r, :m + r + 1] = True  # _prepare_4d_causal_attention_mask(past=m)
    pos = np.arange(m + t)
    if k:
        tpb = window // k  # condensing_size // beacon_size
        for i in range(k):
            mask[window + i, m:m + window] = np.arange(window) < (i + 1) * tpb
            mask[window + i, m + window:] = np.arange(k) == i  # fill_diagonal_
        pos[-k:] = np.arange(tpb, tpb * k + 1, tpb) + m
    return mask, pos[-t:]


def test_worked_example_positions():
    # REFERENCE_NOTES_WAVE2 1.4: W=8, ratio 4, memory 3 -> raw 3..10, beacons at 7 and 11.
    np.testing.assert_array_equal(rules.step_positions(3, 8, 4),
                                  [3, 4, 5, 6, 7, 8, 9, 10, 7, 11])
    mask = rules.step_mask(3, 8, 4)
    np.testing.assert_array_equal(np.nonzero(mask[8, 3:11])[0], [0, 1, 2, 3])  # beacon 0
    assert not mask[:8, 11:].any()  # raw rows never see this window's beacons


@pytest.mark.parametrize("m,window,ratio", [(3, 8, 4), (0, 8, 2), (5, 16, 8), (7, 16, 16),
                                            (4, 8, 1), (6, 8, 0)])
def test_mask_and_positions_equal_reference(m, window, ratio):
    want_mask, want_pos = reference_step(m, window, ratio)
    np.testing.assert_array_equal(rules.step_mask(m, window, ratio), want_mask)
    np.testing.assert_array_equal(rules.step_positions(m, window, ratio), want_pos)


def test_mask_with_static_capacity_hides_empty_slots():
    full = rules.step_mask(3, 8, 4, capacity=6)
    np.testing.assert_array_equal(full[:, :3], True)
    np.testing.assert_array_equal(full[:, 3:6], False)
    np.testing.assert_array_equal(full[:, 6:], rules.step_mask(3, 8, 4)[:, 3:])


def test_adapt_1024_table_llama2():
    cfg = rules.BeaconConfig()  # W 1024, P 4096, headroom 1024, ratios 2..1024 and 0
    table = {0: 3072, 2: 6144, 4: 12288, 8: 24576, 16: 49152, 32: 98304, 64: 196608,
             128: 393216, 256: 786432, 512: 1572864, 1024: 3145728}  # notes 1.5
    order = sorted(table)
    for i, r in enumerate(order):
        assert rules.choose_ratio(table[r], cfg) == r
        if i + 1 < len(order):
            assert rules.choose_ratio(table[r] + 1, cfg) == order[i + 1]
    assert rules.choose_ratio(1, cfg) == 0
    no_zero = rules.BeaconConfig(uncompressed=False)
    assert rules.choose_ratio(100, no_zero) == 2


def test_too_long_input_errors_or_falls_back():
    cfg = rules.BeaconConfig()
    with pytest.raises(rules.BeaconError, match="longer than the largest ratio 1024"):
        rules.choose_ratio(3145729, cfg)
    assert rules.choose_ratio(10**8, rules.BeaconConfig(overflow="largest")) == 1024


def test_ratio_must_divide_the_stride():
    with pytest.raises(rules.BeaconError, match="does not divide beacon.window=1024"):
        rules.BeaconConfig(ratios=(2, 3))
    with pytest.raises(rules.BeaconError, match="native_len > window"):
        rules.BeaconConfig(window=4096, native_len=4096)


def test_expert_not_served():
    cfg = rules.BeaconConfig(window=64, native_len=256, ratios=(2, 4), headroom=64)
    assert cfg.expert(4) == 1 and cfg.n_experts == 2
    with pytest.raises(rules.BeaconError, match="no expert for it"):
        cfg.expert(8)
    shared = rules.BeaconConfig(window=64, native_len=256, ratios=(2, 4), adapter="shared")
    assert shared.expert(4) == 0 and shared.n_experts == 1


def test_memory_is_k_per_full_window():
    for ratio in (2, 4, 8, 1024):
        for n in (1, 5, 17):
            length = n * 1024 + 100  # the partial tail stays raw
            assert rules.memory_length(length, 1024, ratio) == n * 1024 // ratio
    assert rules.memory_length(3000, 1024, 0) == 2048


def test_parameter_counts():
    # Zhang et al.'s clone of q/k/v/o on Llama-2-7B: 4 * 4096^2 * 32 (Li et al.: "~2B").
    assert lora.count(LLAMA2_7B, "clone", 1, 0) == 2_147_483_648
    assert lora.count(LLAMA31_8B, "clone", 1, 0) == 1_342_177_280  # GQA: k/v are 1024 wide
    # LoRA on q/k/v/o: r * (d_in + d_out) per projection and layer.
    assert lora.count(LLAMA2_7B, "lora", 1, 1) == 1_048_576
    assert lora.count(LLAMA2_7B, "lora", 10, 32) == 335_544_320  # 10 experts, rank 32
    assert lora.count(LLAMA31_8B, "lora", 10, 32) == 272_629_760
    assert lora.count(LLAMA2_7B, "lora", 1, 32) == 33_554_432  # the shared adapter
