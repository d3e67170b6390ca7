import os
import sys

from .cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # the reader stopped early (`... | head`): not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is silent too
    sys.exit(0)
