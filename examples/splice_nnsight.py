"""The same spec, executed inside nnsight tracing contexts, this time from a YAML file."""
import interventions as iv

model = iv.load("smollm2-135m")
spec = iv.from_text("""
schema_version: 1
kind: splice
source: {model: A, layer: 0.3, position: -1, stream: resid_post}   # relative depth 0.3
target: {model: B, layer: 0.3, position: -1, stream: resid_post}
combine: sum
apply: prefill          # graft once on the prompt, as in AC (every_step: also each new token)
""")
prompts = {"A": ["Maria is at the Colosseum"],
           "B": [model.format_prompt("Which country is Maria in? Answer with the country name only.")]}
result = iv.run(spec, model, prompts, backend="nnsight", max_new_tokens=12)
print(iv.to_json(spec), result.texts)
