"""Activation communication between two SmolLM2 agents, TransformerLens backend."""
import interventions as iv

model = iv.load("smollm2-135m")                      # embedded default, cached as safetensors
splice = iv.Splice(
    source=iv.Site("A", layer=8, position=-1),         # A's last token, output of block 8
    target=iv.Site("B", layer=8, position=-1),         # B's last prompt token, same block
    combine="mean",                                    # sum | mean | replace | your own
)
prompts = {
    "A": ["Maria is at the Colosseum"],
    "B": [model.format_prompt("Which country is Maria in? Answer with the country name only.")],
}
result = iv.run(splice, model, prompts, backend="transformer_lens", max_new_tokens=12)
print(result.texts)
