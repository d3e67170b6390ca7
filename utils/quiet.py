"""What a notebook shows: results, not library chatter.

Called by every notebook's setup cell. Training and loading print progress bars, load reports and
warnings that say nothing about the experiment (a red box in JupyterLab for each); the notebook's own
prints and plots say what happened. pandas shows whole replies rather than cutting them at 50 characters.
"""

from __future__ import annotations

import logging
import warnings


def notebook() -> None:
    # Before the imports below, which may trigger them: tqdm warns at import time when a notebook has no
    # ipywidgets for its bars; bitsandbytes looks for an optional CPU kernel package on CPUs with AVX512-BF16
    # and warns when it is absent.
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
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
