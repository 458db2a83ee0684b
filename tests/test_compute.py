"""Analytic FLOPs accounting."""

import pytest

from interventions.compute import (Compute, ModelShape, decode_flops, decode_flops_no_cache,
                                           prefill_flops)

SHAPE = ModelShape(n_layers=2, d_model=4, n_params_nonembedding=100, vocab_size=10)


def test_prefill_hand_computation():
    # 3 tokens: dense 2*100 + unembed 2*4*10 = 280 each; causal attention 2*2*4*(1+2+3) = 96
    assert prefill_flops(SHAPE, 3) == 3 * 280 + 96
    assert prefill_flops(SHAPE, 3, include_unembed=False) == 3 * 200 + 96
    # sender stopped after block 0: half the blocks' params and attention, no logits
    assert prefill_flops(SHAPE, 3, upto_layer=0, include_unembed=False) == 3 * 100 + 2 * 1 * 4 * 6
    # one token after 5 cached tokens attends to 6
    assert prefill_flops(SHAPE, 1, past_tokens=5) == 280 + 2 * 2 * 4 * 6


def test_upto_last_layer_is_full_forward():
    assert prefill_flops(SHAPE, 7, upto_layer=SHAPE.n_layers - 1, include_unembed=True) == prefill_flops(SHAPE, 7)
    assert prefill_flops(SHAPE, 7, upto_layer=0) < prefill_flops(SHAPE, 7)
    with pytest.raises(ValueError):
        prefill_flops(SHAPE, 3, upto_layer=2)


def test_kv_cache_saves_compute():
    assert decode_flops(SHAPE, 10, 1) == decode_flops_no_cache(SHAPE, 10, 1) == prefill_flops(SHAPE, 10)
    assert decode_flops(SHAPE, 10, 5) < decode_flops_no_cache(SHAPE, 10, 5)
    # with a cache, generation costs exactly one prefill over everything fed to the model
    assert decode_flops(SHAPE, 10, 5) == pytest.approx(prefill_flops(SHAPE, 14))
    assert decode_flops_no_cache(SHAPE, 10, 3) == sum(prefill_flops(SHAPE, n) for n in (10, 11, 12))


def test_compute_accumulates_and_merges():
    c = Compute()
    f1 = c.add_prefill("A", SHAPE, 5, upto_layer=0)  # stopped sender: no unembed by default
    assert f1 == prefill_flops(SHAPE, 5, upto_layer=0, include_unembed=False)
    f2 = c.add_generation("B", SHAPE, 5, 3)
    assert c.tokens == {"A": 5, "B": 8}
    assert c.flops == f1 + f2
    d = Compute(tokens={"B": 2}, flops=1.0, wall_s=0.5)
    assert c.merge(d) is c and c.tokens == {"A": 5, "B": 10} and c.wall_s == 0.5
    with c.timed():
        pass
    out = c.to_dict()
    assert set(out) == {"tokens", "flops", "wall_s", "role_flops", "flops_no_cache"} and out["wall_s"] >= 0.5
    assert Compute.from_dict(out) == c
    # the FLOPs split over the roles; flops merged in without a role stay in the total only
    assert c.role_flops == {"A": f1, "B": f2} and c.flops == f1 + f2 + 1.0
    assert Compute.from_dict({"tokens": {"A": 1}, "flops": 2.0}).role_flops == {}   # rows written before the split


@pytest.mark.parametrize("tied", [False, True])
def test_model_shape_from_tiny_llama(tied):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=100, intermediate_size=128,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg)
    d, ff, kv = 64, 128, 2 * (64 // 4)
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff + 2 * d  # q, k, v, o, gate/up/down, 2 RMSNorms
    manual = 2 * per_layer + d                                   # + final norm; embeddings excluded
    shape = ModelShape.from_hf(model)
    assert shape == ModelShape(n_layers=2, d_model=64, n_params_nonembedding=manual, vocab_size=100,
                               n_heads=4, head_dim=16, d_ff=128)
    total = sum(p.numel() for p in model.parameters())
    assert total == manual + 100 * 64 * (1 if tied else 2)


# ---------------------------------------------------------------- the paper's count (Hoffmann, no cache)

HSHAPE = ModelShape(n_layers=2, d_model=4, n_params_nonembedding=100, vocab_size=10, n_heads=2, head_dim=2, d_ff=8)


def test_hoffmann_forward_hand_computation():
    from interventions.compute import hoffmann_forward_flops

    # seq 3, attention width 2*2 = 4: embeddings 2*3*10*4 = 240; per block: qkv 2*3*3*4*4 = 288,
    # logits 2*9*4 = 72, softmax 3*2*9 = 54, values 72, output 2*3*4*4 = 96, MLP 2*3*(32+32) = 384
    assert hoffmann_forward_flops(HSHAPE, 3) == 240 + 2 * (288 + 72 + 54 + 72 + 96 + 384) + 240
    assert hoffmann_forward_flops(HSHAPE, 3, upto_layer=0, include_unembed=False) == 240 + 966
    # quadratic in the sequence: doubling it more than doubles the count
    assert hoffmann_forward_flops(HSHAPE, 6) > 2 * hoffmann_forward_flops(HSHAPE, 3)


def test_hoffmann_generation_reruns_the_prefix_and_rows_carry_both_counts():
    from interventions.compute import hoffmann_forward_flops, hoffmann_generation_flops

    assert hoffmann_generation_flops(HSHAPE, 5, 3) == sum(hoffmann_forward_flops(HSHAPE, n) for n in (5, 6, 7))
    c = Compute()
    c.add_generation("A", HSHAPE, 5, 3)
    c.add_prefill("B", HSHAPE, 4, upto_layer=0)
    assert c.flops == decode_flops(HSHAPE, 5, 3) + prefill_flops(HSHAPE, 4, upto_layer=0, include_unembed=False)
    assert c.flops_no_cache == (hoffmann_generation_flops(HSHAPE, 5, 3)
                                + hoffmann_forward_flops(HSHAPE, 4, upto_layer=0, include_unembed=False))
    again = Compute.from_dict(c.to_dict())
    assert again.flops_no_cache == c.flops_no_cache and Compute().merge(c).flops_no_cache == c.flops_no_cache
    # the no-cache count outgrows the cached one as generations get longer
    long = Compute()
    long.add_generation("A", HSHAPE, 5, 40)
    assert long.flops_no_cache / long.flops > c.flops_no_cache / c.flops
