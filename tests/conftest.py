import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama saved as a local model directory, loadable by name like any user model."""
    from tiny_models import tiny_model

    model = tiny_model("llama")
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.hf.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    return directory
