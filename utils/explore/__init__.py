"""Stage 01, what is in an OASST export: the figures and plots of ``notebooks/01_explore_trees.ipynb``.

The OASST paper (Köpf et al., 2023, sections 3-4) describes the dataset by its languages, roles, tree shapes,
rankings and crowd labels; :mod:`~utils.explore.counts` computes the same on any list of trees, and one more number a
reward model cares about: how often the better-ranked reply is simply the longer one. :mod:`~utils.explore.params`
holds the stage's parameters, :mod:`~utils.explore.stage` its one step (every figure, computed at once) and its
metrics, :mod:`~utils.explore.plots` the plots.
"""
