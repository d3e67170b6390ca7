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
    from utils.model.tiny_base import train_tokenizer

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
    """Every notebook executed by the runner on the micro profile, as a user runs it (``python -m recipes.run``, its
    console kept in ``console.log`` beside the run dir); returns the run dir.

    A failing stage fails every test that uses this fixture with the runner's one-line message.
    """
    import subprocess
    import sys

    from utils.pipeline.profile import REPO_ROOT

    run_dir = tmp_path_factory.mktemp("runs") / "micro"
    proc = subprocess.run([sys.executable, "-m", "recipes.run", "--profile", str(MICRO_PROFILE), "--run-dir", str(run_dir)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    (run_dir.parent / "console.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"the micro run failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return run_dir
