"""A tracing function as a protocol: activation communication written as plain nnsight traces.

    interventions eval examples/plugin_nnsight.py --task countries --n 50
"""
import torch
from nnsight.modeling.transformers import TransformersModel

import interventions as iv


@iv.protocol("nnsight_replace", roles=("A", "B"))
def nnsight_replace(session, batch, *, layer: int = 8, max_new_tokens: int = 12):
    """A's last-token state after block `layer` replaces B's, then B answers."""
    A, B = session.model("A"), session.model("B")
    sender, receiver = A.encode(batch.prompts["A"]), B.encode(batch.prompts["B"])
    a, b = TransformersModel(A.hf, tokenizer=A.tokenizer), TransformersModel(B.hf, tokenizer=B.tokenizer)
    with torch.inference_mode():
        with a.trace(**sender) as tracer:
            state = a.model.layers[layer].output[:, -1].save()
            tracer.stop()
        options = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=B.tokenizer.pad_token_id)
        with b.generate(**options) as tracer:
            with tracer.invoke(**receiver):
                b.model.layers[layer].output[:, -1] = state
            with tracer.invoke():
                ids = tracer.result.save()
    return B.tokenizer.batch_decode(ids[:, receiver["input_ids"].shape[1]:], skip_special_tokens=True)
