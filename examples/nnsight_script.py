"""An intervention written directly as an nnsight tracing script against a zoo model."""
import torch
from nnsight.modeling.transformers import TransformersModel

import interventions as iv

model = iv.load("smollm2-135m")
traced = TransformersModel(model.hf, tokenizer=model.tokenizer)
sender = model.encode(["Maria is at the Colosseum"])
receiver = model.encode([model.format_prompt("Which country is Maria in?")])

with torch.inference_mode():
    with traced.trace(sender["input_ids"], attention_mask=sender["attention_mask"]) as tracer:
        state = traced.model.layers[8].output[:, -1].save()     # A's last token after block 8
        tracer.stop()                                            # A needs no later blocks
    with traced.trace(receiver["input_ids"], attention_mask=receiver["attention_mask"]):
        traced.model.layers[8].output[:, -1] = state             # AC "replace" into B
        logits = traced.lm_head.output.save()

top = logits[0, -1].softmax(-1).topk(5)
print([(model.tokenizer.decode(i), round(p.item(), 3)) for p, i in zip(top.values, top.indices)])
