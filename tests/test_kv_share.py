"""KV transfer and the kv_share protocol, against references built by hand: the plain HF forward of
the joined prompt, and a layer-by-layer forward of the joined sequence with a per-layer mask."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import interventions as iv
from interventions.harness.protocols.base import Context
from interventions.harness.protocols.kv_share import KVShare
from interventions.harness.prompts import answer_prompt, choice_context
from interventions.harness.tasks import get_task
from interventions.spec import KVTransferError
from tiny_models import tiny_model

BACKENDS = ["torch", "nnsight", "transformer_lens"]
SENDERS = ["w3 w4 w5 w6", "w7", "w8 w9 w10 w11 w12 w13"]       # different lengths: padding in the cache
RECEIVERS = ["w20 w21", "w22 w23 w24 w25", "w26"]               # and in the receiver's prompts
PROMPTS = {"A": SENDERS, "B": RECEIVERS}
TOL = 1e-4


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def ids_of(model, text: str) -> list[int]:
    return model.tokenizer(text)["input_ids"]


@torch.no_grad()
def reference_logits(hf, ids: list[int], n_sender: int, hidden_layers=()) -> torch.Tensor:
    """(len(ids), vocab): the joined sequence through the decoder layers one by one (positions
    0..n-1, no cache); on ``hidden_layers`` the receiver's tokens may not attend to the sender's."""
    n = len(ids)
    x = hf.model.embed_tokens(torch.tensor([ids]))
    positions = torch.arange(n)[None]
    rotary = hf.model.rotary_emb(x, positions)
    causal = torch.ones(n, n).tril().bool()
    for layer, block in enumerate(hf.model.layers):
        allowed = causal.clone()
        if layer in hidden_layers:
            allowed[n_sender:, :n_sender] = False
        mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = block(x, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
        x = x[0] if isinstance(x, tuple) else x
    return hf.lm_head(hf.model.norm(x))[0]


def reference_greedy(hf, sender: list[int], receiver: list[int], steps: int, hidden_layers=()) -> list[int]:
    ids = sender + receiver
    for _ in range(steps):
        ids = ids + [int(reference_logits(hf, ids, len(sender), hidden_layers)[-1].argmax())]
    return ids[len(sender) + len(receiver):]


def reference_logliks(hf, tok, sender: list[int], receiver: list[int], choices, hidden_layers=()) -> list[float]:
    out = []
    for choice in choices:
        cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
        ids = sender + receiver + cont
        logp = torch.log_softmax(reference_logits(hf, ids, len(sender), hidden_layers), -1)
        start = len(sender) + len(receiver)
        out.append(sum(float(logp[start - 1 + i, t]) for i, t in enumerate(cont)))
    return out


def test_reference_without_hidden_layers_is_the_plain_forward(llama):
    ids = ids_of(llama, SENDERS[0] + " " + RECEIVERS[0])
    with torch.no_grad():
        plain = llama.hf(input_ids=torch.tensor([ids])).logits[0]
    assert (reference_logits(llama.hf, ids, 4) - plain).abs().max() <= TOL


# ---------------------------------------------------------------- the receiver reading a cache


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_own_cache_reproduces_the_full_prompts_logits(family, backend):
    model = tiny_model(family)
    out = iv.Session(model, backend).forward("B", PROMPTS, [iv.KVTransfer()])
    with torch.no_grad():
        for row, (sender, receiver) in enumerate(zip(SENDERS, RECEIVERS)):
            full = model.hf(input_ids=torch.tensor([ids_of(model, sender + " " + receiver)])).logits[0]
            n = len(ids_of(model, receiver))
            assert out.attention_mask[row].sum() == n
            assert (out.logits[row, -n:] - full[-n:]).abs().max() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_layers_is_the_plain_receiver(backend):
    model = tiny_model("llama")   # fresh: the TransformerLens copy is booted by the masked request itself
    session = iv.Session(model, backend)
    masked = session.forward("B", PROMPTS, [iv.KVTransfer(layers=())])
    plain = session.forward("B", RECEIVERS)
    shared = session.forward("B", PROMPTS, [iv.KVTransfer()])
    real = plain.attention_mask.bool()
    assert (masked.logits - plain.logits)[real].abs().max() <= TOL
    assert (shared.logits - plain.logits)[real].abs().max() > 1e-2      # the cache does change the answer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers,hidden", [("1..2", (0, 3)), ((0, 3), (1, 2)), ("50%..100%", (0, 1)),
                                           ((-1,), (0, 1, 2))])
def test_a_subset_of_layers_matches_a_per_layer_mask(llama, backend, layers, hidden):
    out = iv.Session(llama, backend).forward("B", PROMPTS, [iv.KVTransfer(layers=layers)])
    for row, (sender, receiver) in enumerate(zip(SENDERS, RECEIVERS)):
        s, r = ids_of(llama, sender), ids_of(llama, receiver)
        expected = reference_logits(llama.hf, s + r, len(s), hidden)[len(s):]
        assert (out.logits[row, -len(r):] - expected).abs().max() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_decode_and_loglikelihood_agree_with_the_reference(llama, backend):
    session, spec, hidden = iv.Session(llama, backend), iv.KVTransfer(layers="1..2"), (0, 3)
    generated = session.generate("B", PROMPTS, [spec], max_new_tokens=5)
    decoded = session.decode("B", PROMPTS, [spec], max_new_tokens=5)
    choices = [("w30", "w31 w32"), ("w33 w34", "w35"), ("w36", "w37")]
    scores = session.loglikelihood("B", PROMPTS, choices, [spec])
    for row, (sender, receiver) in enumerate(zip(SENDERS, RECEIVERS)):
        s, r = ids_of(llama, sender), ids_of(llama, receiver)
        assert generated.ids[row].tolist() == reference_greedy(llama.hf, s, r, 5, hidden)
        assert scores.logliks[row] == pytest.approx(reference_logliks(llama.hf, llama.tokenizer, s, r, choices[row],
                                                                      hidden), abs=1e-4)
    assert torch.equal(decoded.ids, generated.ids)
    # one row: no padding anywhere, so sdpa is handed no mask at the decoding steps and the hook builds it
    alone = session.generate("B", {"A": SENDERS[:1], "B": RECEIVERS[:1]}, [spec], max_new_tokens=5)
    s, r = ids_of(llama, SENDERS[0]), ids_of(llama, RECEIVERS[0])
    assert alone.ids[0].tolist() == reference_greedy(llama.hf, s, r, 5, hidden)
    assert generated.compute[0].tokens == {"A": 4, "B": 2 + 5}


def test_a_receivers_soft_tokens_and_a_cache_compose(llama):
    """Soft tokens rewrite the receiver's inputs; the cache still comes first."""
    vectors = torch.randn(2, llama.d_model, generator=torch.Generator().manual_seed(0))
    out = iv.Session(llama, "torch").forward("B", PROMPTS, [iv.KVTransfer(), iv.SoftTokens(vectors=vectors)])
    embed = llama.hf.get_input_embeddings()
    with torch.no_grad():
        for row, (sender, receiver) in enumerate(zip(SENDERS, RECEIVERS)):
            joined = torch.cat([embed(torch.tensor(ids_of(llama, sender + " " + receiver))), vectors])
            full = llama.hf(inputs_embeds=joined[None]).logits[0]
            n = len(ids_of(llama, receiver)) + 2
            assert (out.logits[row, -n:] - full[-n:]).abs().max() <= TOL


# ---------------------------------------------------------------- layers by attention importance


def test_importance_keeps_the_layers_with_most_attention_on_the_sender(llama):
    eager = copy.deepcopy(llama.hf)
    eager.set_attn_implementation("eager")
    session = iv.Session(llama, "torch")
    spec = iv.KVTransfer(layers="importance", n_layers=2)
    program = session.program("B", PROMPTS, [spec])
    out = session.forward("B", PROMPTS, [spec])
    for row, (sender, receiver) in enumerate(zip(SENDERS, RECEIVERS)):
        s, r = ids_of(llama, sender), ids_of(llama, receiver)
        with torch.no_grad():
            attentions = eager(input_ids=torch.tensor([s + r]), output_attentions=True).attentions
        mass = torch.stack([a[0, :, len(s):, :len(s)].sum(-1).mean() for a in attentions])
        assert program.prefix.importance[row] == pytest.approx(mass, abs=1e-5)
        top = set(mass.topk(2).indices.tolist())
        assert set(program.prefix.visible[row].nonzero().flatten().tolist()) == top
        expected = reference_logits(llama.hf, s + r, len(s), set(range(4)) - top)[len(s):]
        assert (out.logits[row, -len(r):] - expected).abs().max() <= TOL
    assert llama.hf.config._attn_implementation == "sdpa"        # the calibration's eager switch is undone
    plain = session.forward("B", PROMPTS, [iv.KVTransfer(layers=(0,))])
    assert out.compute[0].flops > plain.compute[0].flops           # the calibration forward is charged


# ---------------------------------------------------------------- controls, caching, compute


def test_random_control_keeps_each_positions_norm_and_zero_empties_the_cache(llama):
    session = iv.Session(llama, "torch")
    real = session.program("B", PROMPTS, [iv.KVTransfer()]).prefix
    noise = session.program("B", PROMPTS, [iv.KVTransfer()], control="random").prefix
    zero = session.program("B", PROMPTS, [iv.KVTransfer()], control="zero").prefix
    for name in ("keys", "values"):
        a, b = getattr(real, name), getattr(noise, name)         # (layers, rows, heads, P, dim)
        norms = lambda t: t.permute(0, 1, 3, 2, 4).flatten(3).norm(dim=-1)  # noqa: E731  per layer, row, position
        assert torch.allclose(norms(a), norms(b), atol=1e-4)
        assert (a - b).abs().max() > 0.1
        assert torch.count_nonzero(getattr(zero, name)) == 0
    assert torch.equal(real.mask, noise.mask)


def test_sender_cache_is_computed_once_and_charged_to_every_row(llama, monkeypatch):
    session = iv.Session(llama, "torch")
    calls = []
    forward = llama.hf.forward
    monkeypatch.setattr(llama.hf, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    first = session.forward("B", PROMPTS, [iv.KVTransfer()])
    again = session.forward("B", PROMPTS, [iv.KVTransfer(layers="0..1")])
    assert len(calls) == 3                                         # the sender once, the receiver twice
    for result in (first, again):
        assert [c.tokens["A"] for c in result.compute] == [4, 1, 6]
    shared = session.forward("B", {"A": SENDERS[:1], "B": RECEIVERS}, [iv.KVTransfer()])  # one sender for all
    assert [c.tokens["A"] for c in shared.compute] == [4, 4, 4]


# ---------------------------------------------------------------- bad input


def test_refusals_name_the_problem(llama):
    other = tiny_model("qwen2")
    with pytest.raises(KVTransferError, match="same architecture.*ac with an align map, nl_message or nl_debate"):
        iv.Session({"A": other, "B": llama}, "torch").forward("B", PROMPTS, [iv.KVTransfer()])
    gemma = tiny_model("gemma3")
    with pytest.raises(KVTransferError, match="sliding-window layers"):
        iv.Session(gemma, "torch").forward("B", PROMPTS, [iv.KVTransfer()])
    with pytest.raises(iv.InterventionError, match="decodes greedily or samples.*num_beams"):
        iv.Session(llama, "torch").generate("B", PROMPTS, [iv.KVTransfer()], num_beams=2)
    with pytest.raises(iv.InterventionError, match="two kv_transfer"):
        iv.Session(llama, "torch").forward("B", PROMPTS, [iv.KVTransfer(), iv.KVTransfer(layers=(1,))])
    with pytest.raises(iv.SpecFormatError, match="starts at 3, after its end 1"):
        iv.Session(llama, "torch").forward("B", PROMPTS, [iv.KVTransfer(layers="3..1")])
    with pytest.raises(iv.SpecFormatError, match="has 4 layers"):
        iv.Session(llama, "torch").forward("B", PROMPTS, [iv.KVTransfer(layers="importance", n_layers=5)])
    with pytest.raises(iv.LayerOutOfRangeError):
        iv.Session(llama, "torch").forward("B", PROMPTS, [iv.KVTransfer(layers=(7,))])


@pytest.mark.parametrize("fields,message", [
    ({"layers": "some"}, "expected 'all', 'importance', a block"),
    ({"layers": "1..x"}, "'x' in a block is not a layer"),
    ({"layers": "importance"}, "needs a whole number of layers"),
    ({"layers": "all", "n_layers": 2}, "only read with layers='importance'"),
    ({"source": "B"}, "both role 'B'"),
])
def test_bad_specs_are_refused(fields, message):
    with pytest.raises(iv.SpecFormatError, match=message):
        iv.KVTransfer(**fields)


def test_spec_round_trips():
    for spec in (iv.KVTransfer(layers=(0, "50%", 0.25)), iv.KVTransfer(layers="importance", n_layers=3),
                 iv.KVTransfer(layers="25%..75%")):
        assert iv.from_text(iv.to_yaml(spec)) == spec
        assert iv.from_dict(iv.to_dict(spec)) == spec


# ---------------------------------------------------------------- the protocol


def word_task(tmp_path, scoring: str, n: int = 3):
    path = tmp_path / f"{scoring}.jsonl"
    question = lambda i: " ".join(f"w{3 + (7 * i + k) % 90}" for k in range(2 + i))  # noqa: E731
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": question(i), "choices": ["w5", "w6 w7"],
                                        "answer": "w5"}) + "\n" for i in range(n)))
    task = get_task("jsonl", path=str(path), scoring=scoring)
    return task, task.items(n, 0)


@pytest.mark.parametrize("scoring", ["exact", "choice_loglik"])
def test_kv_share_answers_as_the_reference_does(tmp_path, llama, scoring):
    task, items = word_task(tmp_path, scoring)
    ctx = Context(iv.Session(llama, "torch"), task, max_new_tokens=4, pool=items)
    outcomes = KVShare(layers="1..2").run(ctx, items)
    mismatched = KVShare(layers="1..2", control="mismatched").run(ctx, items)
    for item, outcome, other in zip(items, outcomes, mismatched):
        read = lambda it: choice_context(it) if scoring == "choice_loglik" else it.question  # noqa: E731
        s = ids_of(llama, read(item))                          # sender=raw: A reads B's question text
        r = ids_of(llama, answer_prompt(llama, task, item))
        if scoring == "exact":
            expected = llama.tokenizer.decode(reference_greedy(llama.hf, s, r, 4, (0, 3)), skip_special_tokens=True)
            assert outcome.raw == expected
        else:
            expected = reference_logliks(llama.hf, llama.tokenizer, s, r, item.choices, (0, 3))
            assert outcome.raw == pytest.approx(expected, abs=1e-4)
        assert outcome.interventions == [iv.to_dict(iv.KVTransfer(layers="1..2"))]
        assert outcome.compute.tokens["A"] == len(s)
        partner = ctx.partner(item)
        assert other.extra["message_from"] == partner.id != item.id
        assert other.compute.tokens["A"] == len(ids_of(llama, read(partner)))


def test_kv_share_refuses_other_architectures(tmp_path, llama):
    task, items = word_task(tmp_path, "exact", n=2)
    ctx = Context(iv.Session({"A": tiny_model("qwen2"), "B": llama}, "torch"), task, max_new_tokens=4, pool=items)
    with pytest.raises(KVTransferError, match="nl_message or nl_debate"):
        KVShare().run(ctx, items)


def test_kv_share_fields_and_names():
    assert KVShare(layers="0,2").spec().layers == (0, 2)
    assert KVShare(layers="importance", n_layers=2).name == "kv_share_importance2"
    assert KVShare(layers="25%..75%", control="random").name == "kv_share_25pctto75pct_ctl-random"
    with pytest.raises(ValueError, match="kv_share.n_layers"):
        KVShare(layers="importance")


def test_kv_share_runs_in_an_experiment(tmp_path, tiny_dir):
    from interventions.harness.experiment import load_experiment
    from interventions.harness.runner import run_experiment

    path = tmp_path / "e.yaml"
    path.write_text(json.dumps({
        "name": "kv", "max_new_tokens": 4, "batch_size": 3, "pairs": [{"A": str(tiny_dir), "B": str(tiny_dir)}],
        "tasks": [{"name": "countries", "n": 4}],
        "protocols": [{"kind": "kv_share", "layers": ["all", "1..2"], "control": ["none", "random"]},
                      {"kind": "kv_share", "layers": "importance", "n_layers": 2}, {"kind": "silent"}]}))
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    names = {r["protocol"] for r in rows}
    assert names == {"kv_share_all", "kv_share_1to2", "kv_share_all_ctl-random", "kv_share_1to2_ctl-random",
                     "kv_share_importance2", "silent"}
    for row in rows:
        if row["protocol"] != "silent":
            assert row["compute"]["tokens"]["A"] > 0 and row["interventions"][0]["kind"] == "kv_transfer"
