"""What a notebook shows: results, not library chatter; and torch's threads sized to the machine.

Called by every notebook's setup cell. Training and loading print progress bars, load reports and
warnings that say nothing about the experiment (a red box in JupyterLab for each); the notebook's own
prints and plots say what happened. pandas shows whole replies rather than cutting them at 50 characters.
"""

from __future__ import annotations

import warnings


def notebook() -> None:
    # Before the imports below, which may trigger it: tqdm warns at import time when a notebook has no ipywidgets
    # for its bars. (bitsandbytes' note on an optional CPU kernel is dropped in utils/__init__.py.)
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    import datasets
    import pandas as pd
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # Deprecation notices from libraries about their own internals, and trl's notes on the settings it filled in.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    pd.set_option("display.max_colwidth", None)
    # As many torch threads as the process may use cores (or OMP_NUM_THREADS): more only slow a shared machine.
    from utils.pipeline.machine import use_available_cores

    use_available_cores()
