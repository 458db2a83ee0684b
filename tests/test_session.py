"""The session and iv.run from a newcomer's side: roles, batch sizes, sampling, masks, controls,
registries and family adapters."""

from __future__ import annotations

import warnings

import pytest
import torch

import interventions as iv
from interventions.controls import apply_control
from interventions.harness.protocols import Context
from interventions.harness.tasks import get_task
from interventions.models.families import UnknownFamilyError, family_of
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_missing_role_in_prompts_is_named(model):
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1))
    with pytest.raises(iv.MissingRoleError, match="reads from model role 'A'"):
        iv.run(splice, model, {"B": ["w3 w4"]}, backend="torch")


def test_source_batch_must_match_or_be_one(model):
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), combine="sum")
    with pytest.raises(iv.InterventionError, match="'A' has 2 prompts for 3 rows of role 'B'"):
        iv.run(splice, model, {"A": ["w3", "w4"], "B": ["w5", "w6", "w7"]}, backend="torch")
    shared = iv.run(splice, model, {"A": ["w3 w4"], "B": ["w5", "w6", "w7"]}, backend="torch")
    each = iv.run(splice, model, {"A": ["w3 w4"] * 3, "B": ["w5", "w6", "w7"]}, backend="torch")
    assert torch.allclose(shared.logits, each.logits)


def test_sampling_is_available_and_seeded(model):
    steer = iv.Steer(target=iv.Site("B", 1), vector=torch.zeros(model.d_model))
    first = iv.run(steer, model, ["w3 w4", "w5"], backend="torch", max_new_tokens=5, do_sample=True, seed=3)
    again = iv.run(steer, model, ["w3 w4", "w5"], backend="torch", max_new_tokens=5, do_sample=True, seed=3)
    assert torch.equal(first.new_tokens, again.new_tokens)


def test_capture_at_all_positions_comes_with_its_mask(model):
    site = iv.Site("A", 1, position="all")
    result = iv.run(iv.Capture((site,)), model, {"A": ["w3 w4 w5", "w6"]}, backend="torch")
    assert result.captures[site].shape[:2] == (2, 3)
    assert result.attention_mask["A"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_steer_vector_shapes_and_relative_depth(model):
    assert len(iv.Steer(target=iv.Site("B", 1), vector=torch.ones(1, 64)).vector) == 64
    with pytest.raises(iv.SpecFormatError, match=r"steer.vector: expected d_model floats, got shape \(2, 32\)"):
        iv.Steer(target=iv.Site("B", 1), vector=torch.ones(2, 32))
    assert model.resolve_layer("50%") == model.resolve_layer(0.5) == 2
    with pytest.warns(UserWarning, match="layer=1.0 is a relative depth"):
        iv.Site("B", layer=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv.Site("B", layer="100%")


def test_controls_keep_the_norm_or_send_nothing():
    message = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    random = apply_control("random", message, "Maria is at the Colosseum")
    assert torch.allclose(random.norm(dim=-1), message.norm(dim=-1), atol=1e-5)
    assert torch.equal(random, apply_control("random", message, "Maria is at the Colosseum"))   # seeded by the source
    assert not torch.allclose(random, apply_control("random", message, "Ana is at the Louvre"))
    assert torch.count_nonzero(apply_control("zero", message, "x")) == 0
    with pytest.raises(KeyError, match="Did you mean 'random'"):
        apply_control("randm", message, "x")


def test_mismatched_partner_is_another_item_with_another_answer(model):
    task = get_task("countries")
    items = task.items(12, 0)
    ctx = Context(iv.Session(model, "torch"), task, pool=items)
    for item in items:
        partner = ctx.partner(item)
        assert partner.id != item.id and partner.answer != item.answer
        assert ctx.partner(item) == partner


@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
def test_capture_at_an_edited_site_reads_the_edit_and_random_control_keeps_the_norm(model, backend):
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), combine="replace")
    capture = iv.Capture((iv.Site("B", 1),))
    prompts = {"A": ["w3 w4 w5"], "B": ["w6 w7"]}
    sent = iv.capture(model, prompts, [splice.source], backend="torch")[splice.source]
    real = iv.run([splice, capture], model, prompts, backend=backend).captures[capture.sites[0]]
    noise = iv.run([splice, capture], model, prompts, backend=backend, control="random").captures[capture.sites[0]]
    assert torch.allclose(real, sent, atol=1e-5)            # replace put A's state there
    assert not torch.allclose(real, noise)
    assert torch.allclose(real.norm(), noise.norm(), atol=1e-4)


def test_registries_suggest_and_families_are_one_entry_each():
    with pytest.raises(iv.UnknownCombineError, match="Did you mean 'mean'"):
        iv.COMBINES.get("meen")
    with pytest.raises(UnknownFamilyError, match="register_family"):
        family_of("mamba")
    gemma = family_of("gemma3_text")
    assert gemma.stream_path(3, "mlp_out") == ("model.layers.3.post_feedforward_layernorm", "output")
    assert family_of("llama").stream_path(3, "resid_pre") == ("model.layers.3", "input")
    assert gemma.hook_name(2, "resid_post") == "blocks.2.hook_resid_post"


def test_session_charges_sources_once_computed_but_to_every_row(model):
    session = iv.Session(model, "torch")
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="sum")
    prompts = {"A": ["w3 w4 w5", "w3 w4 w5"], "B": ["w6", "w7"]}
    first = session.forward("B", prompts, [splice]).compute
    second = session.forward("B", prompts, [splice]).compute
    assert first[0].tokens == second[0].tokens == {"A": 3, "B": 1}
    assert first[0].flops == pytest.approx(second[0].flops)
    assert len(session._states) == 1          # one prompt, one forward of A
