"""Shared fixtures. The suite never touches the network; the micro pipeline runs once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fixtures import MICRO_PROFILE  # noqa: E402 (after the environment above)


@pytest.fixture(scope="module")
def chatml():
    """A tokenizer with its own chat template (ChatML, as Qwen's), which the kit must use as it is."""
    from fixtures import CHATML
    from utils.tiny_base import train_tokenizer

    tok = train_tokenizer(["hi there", "hello", "how are you", "fine thanks"] * 10, 300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


def pytest_configure(config):
    config.addinivalue_line("markers", "pipeline: uses the whole micro pipeline (make test-fast leaves these out)")
    config.addinivalue_line("markers", "slow: trains a real model, converts one or launches processes: seconds to a minute "
                                       "each (make test-fast leaves these out)")


def pytest_collection_modifyitems(config, items):
    for item in items:  # a test that needs the micro run is a pipeline test, whatever its file
        if "micro_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """All five notebooks executed by the runner on the micro profile; returns the run dir.

    A failing stage fails every test that uses this fixture with the runner's one-line message.
    """
    from recipes.run import run_profile, write_run_report
    from utils.pipeline.profile import load_profile

    run_dir = tmp_path_factory.mktemp("runs") / "micro"
    run_profile(load_profile(MICRO_PROFILE), run_dir, progress=False, log=lambda *_: None)
    write_run_report(run_dir, log=lambda *_: None)
    return run_dir
