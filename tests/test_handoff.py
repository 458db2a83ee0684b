"""Triggers on hand-made entropy traces; handoffs from L to S on tiny random models, on every backend,
against transformers' own generate fed by hand."""

from __future__ import annotations

import pytest
import torch
import transformers

import interventions as iv
from interventions.alignment.hidden_to_embedding import RIDGE, hidden_to_embedding, matched_tokens
from interventions.errors import SpecFormatError, VocabularyMismatchError, WidthMismatchError
from interventions.harness.prompts import answer_prompt
from interventions.models import wrap_model
from interventions.session import entropy
from interventions.spec.handoff import Handoff
from interventions.spec.trigger import Trigger
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

BACKENDS = ["torch", "nnsight", "transformer_lens"]
L_PROMPTS = ["w3 w4 w5 ", "w6 w7 "]          # a trailing space: L's text follows as words
S_PROMPTS = ["w8 w9 ", "w10 w11 w12 "]
HORIZON = 6


# ------------------------------------------------------------------------------------------ triggers


def test_a_fixed_trigger_acts_at_n_and_all_never_acts():
    assert Trigger(n=3).fire([1.0] * 10).to_dict() == {"at": 3, "fired": True, "rule": "fixed"}
    assert Trigger(n="all").fire([1.0] * 10).to_dict() == {"at": None, "fired": False, "rule": "never"}
    assert Trigger(n=1, min_tokens=4).fire([1.0] * 10).at == 4


def test_entropy_below_fires_at_the_first_confident_step_after_the_minimum():
    trace = [3.0, 2.0, 0.5, 0.2, 0.1]
    assert Trigger("entropy_below", threshold=1.0).fire(trace).at == 2
    assert Trigger("entropy_below", threshold=1.0, min_tokens=3).fire(trace).at == 3
    # windowed: the mean of the last two steps, 3, 2.5, 1.25, 0.35: below 1.0 first at step 3
    assert Trigger("entropy_below", threshold=1.0, window=2).fire(trace).at == 3


def test_entropy_drop_compares_with_the_running_mean_of_earlier_steps():
    trace = [2.0, 2.0, 1.8, 0.5, 0.4]
    # running means 2, 2, 1.93, ...; step 2 drops 0.2 (not > 1), step 3 drops 1.43
    assert Trigger("entropy_drop", margin=1.0).fire(trace).at == 3
    assert Trigger("entropy_drop", margin=0.1).fire(trace).at == 2
    # windowed over 3 steps, step 3 is (1.8 + 0.5 + 2) / 3 = 1.43 vs 1.93: no; step 4 is 0.9 vs 1.58: yes
    assert Trigger("entropy_drop", margin=0.6, window=3).fire(trace).at == 4


def test_a_trigger_that_never_fires_falls_back_to_max_tokens_and_says_so():
    flat = [2.0] * 20
    firing = Trigger("entropy_below", threshold=0.1, max_tokens=8).fire(flat)
    assert firing.to_dict() == {"at": 8, "fired": False, "rule": "fallback: max_tokens"}
    assert Trigger("entropy_drop", margin=0.5).fire(flat, horizon=12).at == 12
    # a rule that fires only past max_tokens falls back too
    assert not Trigger("entropy_below", threshold=1.0, max_tokens=2).fire([3, 3, 3, 0.1]).fired


def test_bad_triggers_and_handoffs_are_refused_with_what_to_do():
    with pytest.raises(SpecFormatError, match="entropy_below"):
        Trigger("entropy_bellow")
    with pytest.raises(SpecFormatError, match="'all'"):
        Trigger(n=-1)
    with pytest.raises(SpecFormatError, match="min_tokens <= max_tokens"):
        Trigger("entropy_below", min_tokens=5, max_tokens=2)
    with pytest.raises(SpecFormatError, match="past the horizon of 16 tokens .*raise handoff.horizon"):
        Handoff(trigger=Trigger(n=32), horizon=16)
    with pytest.raises(SpecFormatError, match="latent"):
        Handoff(carry="latnet")


def test_a_handoff_is_data():
    spec = Handoff(trigger=Trigger("entropy_drop", margin=0.3, window=4, min_tokens=8, max_tokens=64),
                   carry="both", map="matched_tokens", markers=("<t>", "</t>"), horizon=128)
    assert iv.from_text(iv.to_yaml(spec)) == spec == iv.from_dict(iv.to_dict(spec))
    assert Trigger("entropy_drop", margin=0.3, window=4).label == "drop0.3w4" and Trigger(n=16).label == "n16"


# ------------------------------------------------------------------------------------------ handoffs


def forget_leads():
    from interventions import session
    session._LEADS.clear()


@pytest.fixture(autouse=True)
def fresh_leads():
    """Kept generations live for the process; each test starts without them."""
    forget_leads()


@pytest.fixture(scope="module")
def pair():
    return {"A": tiny_model("qwen2", seed=1), "B": tiny_model("llama", seed=2, width=48)}


def generate(model, prompts=None, max_new_tokens=5, **embedded):
    """transformers' own greedy generate, on prompts or on left-padded input embeddings."""
    batch = model.encode(prompts) if prompts is not None else embedded
    with torch.no_grad():
        out = model.hf.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                                output_hidden_states=True, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, batch["input_ids"].shape[1]:] if prompts is not None else out.sequences
    return new, out


def texts(model, ids):
    return model.tokenizer.batch_decode(ids, skip_special_tokens=True)


def run(pair, backend, n, carry="text", **kw):
    spec = Handoff(trigger=Trigger(n=n), carry=carry, horizon=HORIZON, **kw)
    return iv.run(spec, pair, {"A": L_PROMPTS, "B": S_PROMPTS}, backend=backend, max_new_tokens=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_text_handoff_at_zero_is_s_alone_and_at_all_is_l_alone(pair, backend):
    s_alone, _ = generate(pair["B"], S_PROMPTS)
    at_zero = run(pair, backend, 0)
    assert at_zero.texts == texts(pair["B"], s_alone)
    assert set(at_zero.compute[0].role_flops) == {"B"}  # L never ran, and costs nothing
    l_alone, _ = generate(pair["A"], L_PROMPTS, max_new_tokens=HORIZON)
    at_all = run(pair, backend, "all")
    assert at_all.texts == texts(pair["A"], l_alone)
    assert set(at_all.compute[0].role_flops) == {"A"}   # S wrote nothing and was charged nothing
    assert at_all.notes[1]["handoff"]["trigger"]["rule"] == "never"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_text_handoff_continues_l_s_text_in_s_s_tokenizer(pair, backend):
    l_ids, l_out = generate(pair["A"], L_PROMPTS, max_new_tokens=HORIZON)
    handed = texts(pair["A"], l_ids[:, :3])
    s_ids, _ = generate(pair["B"], [p + h for p, h in zip(S_PROMPTS, handed)])
    got = run(pair, backend, 3)
    assert got.texts == [h + t for h, t in zip(handed, texts(pair["B"], s_ids))]
    note = got.notes[0]["handoff"]
    assert note["handed_tokens"] == 3 and note["trigger"] == {"at": 3, "fired": True, "rule": "fixed"}
    expected = entropy(torch.stack(l_out.logits, 1)[0])          # transformers' own logits, step by step
    assert note["entropy"] == pytest.approx(expected.tolist(), abs=1e-3)


def ridge_map(lead, reader):
    """LatentMAS's map written out: (W_outᵀW_out + λI)⁻¹ W_outᵀ W_in, rescaled to W_in's mean norm."""
    w_out = lead.hf.get_output_embeddings().weight.double()
    w_in = reader.hf.get_input_embeddings().weight.double()
    weight = torch.linalg.solve(w_out.T @ w_out + RIDGE * torch.eye(w_out.shape[1], dtype=torch.float64),
                                w_out.T @ w_in)
    norm = w_in.norm(dim=-1).mean()
    return lambda h: (lambda m: m * norm / m.norm(dim=-1, keepdim=True))(h.double() @ weight).float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("carry", ["latent", "both"])
def test_a_latent_handoff_feeds_l_s_mapped_states_as_s_s_input_embeddings(pair, backend, carry):
    lead, reader = pair["A"], pair["B"]
    l_ids, l_out = generate(lead, L_PROMPTS, max_new_tokens=HORIZON)
    n = 3
    # the last hidden state that chose each of L's first n tokens (transformers' own, after the final norm)
    states = torch.stack([l_out.hidden_states[step][-1][:, -1] for step in range(n)], 1)
    mapped = ridge_map(lead, reader)(states)
    embed = reader.hf.get_input_embeddings()
    rows = []
    for r, prompt in enumerate(S_PROMPTS):
        parts = [embed(torch.tensor(reader.tokenizer(prompt)["input_ids"])), mapped[r]]
        if carry == "both":
            handed = reader.tokenizer(texts(lead, l_ids[r:r + 1, :n])[0], add_special_tokens=False)["input_ids"]
            parts.append(embed(torch.tensor(handed)))
        rows.append(torch.cat(parts))
    width = max(len(x) for x in rows)
    embeds = torch.stack([torch.cat([x.new_zeros(width - len(x), x.shape[1]), x]) for x in rows]).detach()
    mask = torch.stack([torch.arange(width) >= width - len(x) for x in rows]).long()
    s_ids, _ = generate(reader, inputs_embeds=embeds, attention_mask=mask)
    got = run(pair, backend, n, carry=carry)
    written = texts(lead, l_ids[:, :n]) if carry == "both" else ["", ""]
    assert got.texts == [w + t for w, t in zip(written, texts(reader, s_ids))]


def test_a_sweep_over_n_decodes_l_once_and_charges_each_row_what_it_used(pair, monkeypatch):
    session = iv.Session(pair, "torch")
    calls = []
    decode = session.decode
    monkeypatch.setattr(session, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    prompts = {"A": L_PROMPTS, "B": S_PROMPTS}
    flops = {}
    for n in (0, 2, 4, "all"):
        out = session.generate("B", prompts, [Handoff(trigger=Trigger(n=n), horizon=HORIZON)], 5)
        flops[n] = out.compute[0].role_flops.get("A", 0.0)
    assert len(calls) == 1
    again = iv.Session(pair, "torch")     # another session (another pair's, in an experiment) reuses it too
    monkeypatch.setattr(again, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    again.generate("B", prompts, [Handoff(trigger=Trigger(n=3), horizon=HORIZON)], 5)
    assert len(calls) == 1
    shape = session.shape("A")
    prompt_tokens = pair["A"].encode(L_PROMPTS[:1])["attention_mask"].sum().item()
    from interventions.compute import decode_flops
    assert flops[2] == pytest.approx(decode_flops(shape, prompt_tokens, 2))
    assert 0 == flops[0] < flops[2] < flops[4] < flops["all"]


def test_l_finishing_before_the_handoff_keeps_l_s_answer(pair):
    eos = pair["A"].tokenizer.eos_token_id
    lead = iv.Session(pair, "torch").leads("A", L_PROMPTS, HORIZON)
    first = int(lead[0].ids[1])
    forget_leads()          # L decodes again under the new end of sequence
    # make L end its answer at its second token: that token's id becomes end-of-sequence
    tok = pair["A"].tokenizer
    original = tok.eos_token_id
    try:
        tok.eos_token_id = first
        got = run(pair, "torch", 4)
    finally:
        tok.eos_token_id = original
    assert eos == original
    note = got.notes[0]["handoff"]
    assert note["lead_finished"] and note["handed_tokens"] == note["lead_tokens"] <= 2
    assert got.texts[0] == note["lead_text"]


def test_latent_handoffs_across_vocabularies_need_a_map_that_says_so(pair):
    lead = pair["A"]
    other = wrap_model("tiny-llama-v", tiny_model("llama", seed=3).hf, tokenizer=tiny_tokenizer("v"))
    models = {"A": lead, "B": other}
    prompts = {"A": L_PROMPTS, "B": ["v8 v9 ", "v10 "]}
    with pytest.raises(VocabularyMismatchError, match="map: matched_tokens .*or carry: text"):
        iv.run(Handoff(trigger=Trigger(n=2), carry="latent", map="vocabulary", horizon=4), models, prompts,
               max_new_tokens=2)
    with pytest.raises(WidthMismatchError, match="64-wide .* 48 wide; fit a map"):
        run(pair, "torch", 2, carry="latent", map="none")


def permuted(model, seed=5):
    """The same model with its vocabulary's ids shuffled: every token keeps its text and its rows."""
    order = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))   # new id -> old id
    vocab = {t: int((order == i).nonzero()) for t, i in tiny_tokenizer().get_vocab().items()}
    from tokenizers import Tokenizer, models, pre_tokenizers
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                               eos_token="<eos>")
    hf = tiny_model("llama", seed=2, width=48).hf
    with torch.no_grad():
        hf.get_input_embeddings().weight.copy_(hf.get_input_embeddings().weight[order])
    return wrap_model("tiny-llama-permuted", hf, tokenizer=tok)


def test_matched_tokens_pair_the_same_texts_across_vocabularies(pair):
    lead, reader = pair["A"], pair["B"]
    shuffled = permuted(reader)
    ours, theirs = matched_tokens(lead, shuffled)
    assert len(ours) == VOCAB
    assert texts(lead, ours[:, None]) == texts(shuffled, theirs[:, None])
    # through the texts, the shuffled reader gets the map the original gets through the ids
    by_strings = hidden_to_embedding(lead, shuffled, through="strings")
    by_ids = hidden_to_embedding(lead, reader)
    torch.testing.assert_close(by_strings.weight, by_ids.weight, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ protocols


def word_task(tmp_path, n: int = 3):
    import json

    from interventions.harness.tasks import get_task
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": " ".join(f"w{3 + (5 * i + k) % 90}" for k in range(2 + i)),
                                        "answer": "w5"}) + "\n" for i in range(n)))
    task = get_task("jsonl", path=str(path), scoring="exact")
    return task, task.items(n, 0)


def contexts(pair, tmp_path):
    from interventions.harness.protocols import Context
    task, items = word_task(tmp_path)
    return Context(iv.Session(pair, "torch"), task, max_new_tokens=5, pool=items), items


def test_the_reverse_cascade_spans_s_alone_to_l_alone(pair, tmp_path):
    from interventions.harness.protocols import PROTOCOLS
    ctx, items = contexts(pair, tmp_path)
    single = PROTOCOLS.get("single")
    s_alone, l_alone = single(role="B").run(ctx, items), single(role="A").run(ctx, items)
    reverse = PROTOCOLS.get("reverse_cascade")
    at_zero = reverse(n=0).run(ctx, items)
    at_all = reverse(n="all", carry="latent").run(ctx, items)
    assert [o.raw for o in at_zero] == [o.raw for o in s_alone]
    assert [o.raw for o in at_all] == [o.raw for o in l_alone]
    assert at_all[0].compute.role_flops["A"] == pytest.approx(l_alone[0].compute.flops)
    assert reverse(n=8, carry="both").name == "reverse_cascade_both_n8"
    assert reverse(trigger="entropy_below", threshold=0.3).name == "reverse_cascade_text_below0.3"
    assert at_zero[0].extra["handoff"]["trigger"]["at"] == 0
    # the controls: random states of the same norms, and L's start on another item
    random = reverse(n=3, carry="latent", control="random").run(ctx, items)
    latent = reverse(n=3, carry="latent").run(ctx, items)
    assert [o.raw for o in random] != [o.raw for o in latent]
    mismatched = reverse(n=3, control="mismatched").run(ctx, items)
    partner = ctx.partner(items[0])
    lead_text = ctx.session.leads("A", [answer_prompt(pair["A"], ctx.task, partner)], 5)[0].ids[:3]
    assert mismatched[0].extra["handoff"]["lead_text"] == pair["A"].tokenizer.decode(lead_text, skip_special_tokens=True)


def test_the_classic_cascade_escalates_the_items_s_is_unsure_of(pair, tmp_path):
    from interventions.harness.protocols import PROTOCOLS
    ctx, items = contexts(pair, tmp_path)
    single = PROTOCOLS.get("single")
    s_alone, l_alone = single(role="B").run(ctx, items), single(role="A").run(ctx, items)
    cascade = PROTOCOLS.get("cascade")
    never = cascade(threshold=float("-inf")).run(ctx, items)
    always = cascade(threshold=float("inf")).run(ctx, items)
    assert [o.raw for o in never] == [o.raw for o in s_alone] and not any(o.extra["escalated"] for o in never)
    assert [o.raw for o in always] == [o.raw for o in l_alone]
    assert set(always[0].compute.role_flops) == {"A", "B"}
    assert always[0].compute.flops == pytest.approx(s_alone[0].compute.flops + l_alone[0].compute.flops)
    # S's confidence is its mean token log-probability, read here from transformers' own logits
    written = len(ctx.session.leads("B", [answer_prompt_of(ctx, items[0])], 5)[0].ids)
    _, out = generate(pair["B"], [answer_prompt_of(ctx, items[0])])
    logits = torch.stack(out.logits, 1)[0].float()
    chosen = torch.log_softmax(logits, -1).max(-1).values[:written]
    assert never[0].extra["confidence"] == pytest.approx(float(chosen.mean()), abs=1e-4)
    middle = sorted(o.extra["confidence"] for o in never)[1]
    split = cascade(threshold=middle).run(ctx, items)
    assert [o.extra["escalated"] for o in split] == [o.extra["confidence"] < middle for o in never]


def answer_prompt_of(ctx, item):
    return answer_prompt(ctx.model("B"), ctx.task, item)


# ------------------------------------------------------------------------------------------ the report


def test_the_frontier_keeps_the_points_nothing_beats_on_both_axes():
    from interventions.harness.cascade_report import frontier
    points = [(1.0, 0.2), (2.0, 0.1), (3.0, 0.5), (4.0, 0.5), (5.0, 0.7), (0.5, 0.0)]
    assert frontier(points) == [(0.5, 0.0), (1.0, 0.2), (3.0, 0.5), (5.0, 0.7)]


def test_the_report_splits_compute_and_draws_the_cascade_plots(pair, tmp_path):
    from interventions.harness.protocols import PROTOCOLS
    from interventions.harness.report import write_report
    from interventions.harness.units import _row
    ctx, items = contexts(pair, tmp_path)
    reverse, cascade = PROTOCOLS.get("reverse_cascade"), PROTOCOLS.get("cascade")
    protocols = [reverse(n=n) for n in (0, 2, "all")] + [reverse(trigger="entropy_below", threshold=9.0),
                                                          cascade(threshold=-1.0)]

    class Experiment:
        name, max_new_tokens = "cascade_test", 5

    rows = [_row(Experiment, {"A": "tiny-qwen2", "B": "tiny-llama"}, pair, ctx.task, protocol, item, outcome, 0)
            for protocol in protocols for item, outcome in zip(items, protocol.run(ctx, items))]
    out = write_report(rows, tmp_path / "report", "cascade test")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Cascades: compute split and handoff points" in md
    section = md.split("## Cascades: compute split and handoff points")[1]
    line = next(x for x in section.splitlines() if "| reverse_cascade_text_n2 |" in x)
    cells = [c.strip() for c in line.split("|")]
    flops_a = sum(r["compute"]["role_flops"]["A"] for r in rows if r["protocol"] == "reverse_cascade_text_n2") / 3
    assert cells[6] == f"{flops_a:.2e}" and cells[8] == "2.00" and cells[9] == "1.00"
    names = {p.name for p in out["files"]}
    assert {"cascade_entropy_jsonl_words.png", "cascade_n_jsonl_words_A_tiny-qwen2_B_tiny-llama.png",
            "cascade_frontier_jsonl_words_A_tiny-qwen2_B_tiny-llama.png"} <= names
