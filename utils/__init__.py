"""The logic behind the notebooks: a package per stage (explore, sft, reward, ppo, dpo, rloo, evaluate) and the
packages they share (model, rl, oasst, pipeline), with the one base of every stage's parameters (:mod:`params`)."""

import logging as _logging

# bitsandbytes, on CPUs with AVX512-BF16, looks for an optional kernel package at import and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community" when it is absent: it then uses its own kernel, nothing is wrong. That one
# line is dropped where it is logged; every other bitsandbytes message still shows.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())
