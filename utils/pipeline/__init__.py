"""The pipeline's machinery, apart from the ML code: which stages there are and what each needs (:mod:`stages`), a
stage's folder and metrics (:mod:`artifacts`), the notebooks' parameters cells (:mod:`notebook_params`), profiles
(:mod:`profile`), the record and fingerprint of a finished stage (:mod:`stage_record`), the lock on a run folder
(:mod:`run_lock`), trl checkpoints between attempts (:mod:`checkpoints`), the run report (:mod:`report`; its numbers
written for reading by :mod:`figures`, its page by :mod:`page`), what a notebook shows (:mod:`quiet`), and what
``python -m utils.pipeline.repo`` writes into the repository (:mod:`repo`). The runner itself is ``recipes/run.py``."""
