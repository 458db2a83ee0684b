"""Per-layer inspection: residuals, norms, logit lens, cosine / CKA similarity, written reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from interventions.errors import WidthMismatchError
from interventions.inspection import (cka_matrix, compare_models, compare_prompts, cosine_matrix, final_norm,
                                      inspect_prompt, inspect_to_dir, layer_similarity, lens_logits,
                                      linear_cka, write_inspection)
from interventions.inspection.report import lens_settles_at
from interventions.models import wrap_model

PROMPT = "The capital of France is"
OTHER = "Once upon a time, in a small village by the sea,"
PROMPTS = [PROMPT, OTHER, "def add(a, b):", "Water boils at", "My favourite colour is", "2 + 2 ="]


@pytest.fixture(scope="module")
def tokenizer():
    """The real SmolLM2 tokenizer, read from the model cache (no weights loaded) when possible."""
    from transformers import AutoTokenizer

    from interventions.models.cache import entry_cache_dir, read_marker
    from interventions.models.zoo import ZOO

    directory = entry_cache_dir(ZOO["smollm2-135m"])
    if read_marker(directory) is not None:
        return AutoTokenizer.from_pretrained(directory)
    from interventions.models import load_model
    return load_model("smollm2-135m").tokenizer


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer))
    return wrap_model("tiny-llama", LlamaForCausalLM(config), tokenizer)


def tiny_gemma3(tokenizer, softcap: float | None = 0.5):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(1)
    # a small softcap so the test fails if the lens forgets Gemma's logit squashing
    config = Gemma3TextConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=12,
                              vocab_size=len(tokenizer), sliding_window=4, final_logit_softcapping=softcap,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    return wrap_model("tiny-gemma3", Gemma3ForCausalLM(config), tokenizer)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request, tokenizer):
    return tiny_llama(tokenizer) if request.param == "llama" else tiny_gemma3(tokenizer)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def gemma3(tokenizer):
    return tiny_gemma3(tokenizer)


def reference_forward(model, text):
    with torch.inference_mode():
        return model.hf(**model.encode([text]), output_hidden_states=True)


# ---------------------------------------------------------------- inspect_prompt

def test_shapes_and_tokens(model):
    insp = inspect_prompt(model, PROMPT, top_k=3)
    ids = model.encode([PROMPT])["input_ids"][0].tolist()
    assert insp.token_ids == ids and len(insp.tokens) == len(ids)
    assert insp.layers == list(range(-1, model.n_layers))
    assert insp.residuals.shape == (model.n_layers + 1, len(ids), model.d_model)
    assert insp.norms.shape == insp.residuals.shape[:2]
    assert insp.top_ids.shape == insp.top_probs.shape == (model.n_layers + 1, len(ids), 3)
    assert len(insp.top_tokens) == model.n_layers + 1 and len(insp.top_tokens[0][0]) == 3
    assert insp.top_tokens[2][1][0] == model.tokenizer.decode([int(insp.top_ids[2, 1, 0])])
    assert (insp.top_probs[..., :-1] >= insp.top_probs[..., 1:]).all()


def test_logit_lens_at_last_layer_equals_model_logits(model):
    insp = inspect_prompt(model, PROMPT)
    logits = reference_forward(model, PROMPT).logits[0]
    torch.testing.assert_close(lens_logits(model, insp.residuals[-1]), logits, atol=1e-4, rtol=0)
    assert torch.equal(insp.top_ids[-1, :, 0], logits.argmax(-1))
    torch.testing.assert_close(insp.top_probs[-1, :, 0], logits.softmax(-1).max(-1).values, atol=1e-5, rtol=0)


def test_gemma_softcap_is_applied(gemma3):
    insp = inspect_prompt(gemma3, PROMPT)
    uncapped = gemma3.hf.lm_head(final_norm(gemma3)(insp.residuals[-1]))
    assert (lens_logits(gemma3, insp.residuals[-1]).abs() <= 0.5).all()
    assert not torch.allclose(uncapped, reference_forward(gemma3, PROMPT).logits[0], atol=1e-4)


def test_norms_match_hidden_states_of_the_model(model):
    insp = inspect_prompt(model, OTHER)
    hidden = reference_forward(model, OTHER).hidden_states
    assert len(hidden) == model.n_layers + 1
    # transformers reports embeddings + inputs of blocks 1..L-1, then the *normed* last output
    for row in range(model.n_layers):
        expected = torch.linalg.norm(hidden[row][0], dim=-1)
        torch.testing.assert_close(insp.norms[row], expected, atol=1e-4, rtol=1e-5)
    normed_last = final_norm(model)(insp.residuals[-1])
    torch.testing.assert_close(torch.linalg.norm(normed_last, dim=-1), torch.linalg.norm(hidden[-1][0], dim=-1),
                               atol=1e-4, rtol=1e-5)


def test_nnsight_backend_gives_the_same_residuals(llama):
    ref, other = inspect_prompt(llama, PROMPT), inspect_prompt(llama, PROMPT, backend="nnsight")
    torch.testing.assert_close(other.residuals, ref.residuals, atol=1e-5, rtol=0)


def test_lens_settles_at():
    class Fake:
        top_ids = torch.tensor([[[5]], [[7]], [[3]], [[7]], [[7]]])
        layers = [-1, 0, 1, 2, 3]
    assert lens_settles_at(Fake) == 2


# ---------------------------------------------------------------- similarity

def test_cka_of_a_matrix_with_itself_is_one():
    x = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_rotation_and_isotropic_scaling():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-10)  # centering removes offsets


def test_cka_hand_computed():
    # X is already centered; Y is its first column: ||Y^T X||^2 = |[2, 1]|^2 = 5,
    # ||X^T X||_F = ||[[2, 1], [1, 2]]||_F = sqrt(10), ||Y^T Y||_F = 2  ->  5 / (2 sqrt 10)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(5 / (2 * math.sqrt(10)), abs=1e-12)
    # one-dimensional case: squared correlation, (x.y)^2 / (|x|^2 |y|^2) = 16 / (2 * 78/9) = 12/13
    assert linear_cka(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.0], [1.0], [4.0]])) == \
        pytest.approx(12 / 13, abs=1e-12)


def test_cka_matrix_matches_pairwise_linear_cka():
    gen = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(4, 10, 16, generator=gen), torch.randn(3, 10, 6, generator=gen)
    matrix = layer_similarity(xs, ys)
    assert matrix.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert float(matrix[i, j]) == pytest.approx(linear_cka(xs[i], ys[j]), abs=1e-6)
    assert torch.isnan(cka_matrix(torch.ones(1, 5, 3), ys[:1, :5])).all()  # no variance: undefined


def test_layer_similarity_input_checks():
    with pytest.raises(WidthMismatchError, match="linear CKA"):
        layer_similarity(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 3"):
        layer_similarity(torch.randn(3, 2, 4), torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="shapes"):
        layer_similarity(torch.randn(3, 4), torch.randn(3, 2, 4))


def test_cosine_diagonal_is_one_for_identical_prompts(model):
    sim = compare_prompts(model, PROMPT, PROMPT)
    assert sim.method == "cosine" and sim.matrix.shape == (model.n_layers + 1,) * 2
    torch.testing.assert_close(sim.matrix.diagonal(), torch.ones(model.n_layers + 1), atol=1e-5, rtol=0)


def test_compare_prompts_matches_separate_inspections(model):
    # compare_prompts runs both prompts in one left-padded batch; unpadded runs must agree
    sim = compare_prompts(model, PROMPT, OTHER)
    a, b = inspect_prompt(model, PROMPT), inspect_prompt(model, OTHER)
    expected = cosine_matrix(a.residuals[:, -1], b.residuals[:, -1])
    torch.testing.assert_close(sim.matrix, expected, atol=1e-4, rtol=0)


def test_compare_models_across_widths(llama, gemma3):
    sim = compare_models(llama, gemma3, PROMPTS)
    assert sim.method == "linear_cka" and sim.n_samples == len(PROMPTS)
    assert sim.matrix.shape == (llama.n_layers + 1, gemma3.n_layers + 1)
    assert ((sim.matrix >= -1e-6) & (sim.matrix <= 1 + 1e-6)).all()
    same = compare_models(llama, llama, PROMPTS)
    torch.testing.assert_close(same.matrix.diagonal(), torch.ones(llama.n_layers + 1), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- files

def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_inspection_files(tmp_path, llama):
    insp = inspect_prompt(llama, PROMPT, top_k=4)
    paths = write_inspection(insp, tmp_path / "out", similarity=compare_prompts(llama, PROMPT, OTHER))
    assert {p.name for p in paths.values()} == {"inspection.json", "residuals.npy", "norms.png",
                                                "logit_lens.png", "similarity.json", "similarity.png"}
    assert all(_is_png(p) for p in paths.values() if p.suffix == ".png")
    data = json.loads(paths["inspection_json"].read_text())
    assert data["model"]["name"] == "tiny-llama" and data["prompt"] == PROMPT
    assert data["tokens"] == insp.tokens and data["layers"][0] == -1
    assert len(data["norms"]) == llama.n_layers + 1 and len(data["norms"][0]) == len(insp.tokens)
    assert data["logit_lens"]["tokens"][-1][-1] == insp.top_tokens[-1][-1]
    assert len(data["logit_lens"]["probs"][0][0]) == 4
    import numpy as np
    assert np.load(paths["residuals_npy"]).shape == tuple(insp.residuals.shape)
    sim = json.loads(paths["similarity_json"].read_text())
    assert sim["method"] == "cosine" and len(sim["matrix"]) == llama.n_layers + 1


def test_inspect_to_dir(tmp_path, llama, gemma3):
    # inspect_to_dir loads models by name; a local directory is a valid name
    dirs = {}
    for m in (llama, gemma3):
        dirs[m.name] = tmp_path / m.name
        m.hf.save_pretrained(dirs[m.name])
        m.tokenizer.save_pretrained(dirs[m.name])
    summary = inspect_to_dir(str(dirs["tiny-llama"]), PROMPT, tmp_path / "a", compare_prompt=OTHER, top_k=3)
    assert summary["n_layers"] == 3 and summary["similarity"]["method"] == "cosine"
    assert set(summary["files"]) >= {"inspection_json", "norms_png", "logit_lens_png", "similarity_json"}
    assert summary["next_token"]["token"] == json.loads((tmp_path / "a" / "inspection.json").read_text())[
        "logit_lens"]["tokens"][-1][-1][0]
    json.dumps(summary)
    summary = inspect_to_dir(str(dirs["tiny-llama"]), PROMPT, tmp_path / "b",
                             compare_model=str(dirs["tiny-gemma3"]))
    assert summary["similarity"]["method"] == "linear_cka" and summary["similarity"]["shape"] == [4, 4]
    sim = json.loads((tmp_path / "b" / "similarity.json").read_text())
    assert sim["x"]["prompts"][0] == PROMPT and sim["n_samples"] >= 10
    with pytest.raises(ValueError, match="not both"):
        inspect_to_dir(str(dirs["tiny-llama"]), PROMPT, tmp_path / "c", compare_prompt=OTHER,
                       compare_model=str(dirs["tiny-gemma3"]))


# ---------------------------------------------------------------- real model

@pytest.mark.real
def test_real_smollm2_logit_lens_predicts_the_greedy_next_token():
    from interventions.models import load_model

    model = load_model("smollm2-135m")
    insp = inspect_prompt(model, PROMPT)
    batch = model.encode([insp.text])
    with torch.inference_mode():
        greedy = model.hf.generate(**batch, max_new_tokens=1, do_sample=False,
                                   pad_token_id=model.tokenizer.pad_token_id)[0, -1]
    assert int(insp.top_ids[-1, -1, 0]) == int(greedy)
    assert insp.top_tokens[-1][-1][0] == model.tokenizer.decode([int(greedy)])
