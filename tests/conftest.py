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


@pytest.fixture(scope="session")
def _test_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _tiny_models_cache_privately(request, _test_cache, monkeypatch):
    """Corpus activations and statistics of tiny models go to a temporary cache, not the user's;
    `real` tests keep the user's cache, which holds the converted models."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("INTERVENTIONS_CACHE", str(_test_cache))
