"""The Python pool worker of the pool_python_* benchmarks: route "tiny"
(the bench's Tiny job: x * 2 + 1) served by python/portpool_worker.py."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

from portpool_worker import route, serve  # noqa: E402


@route("tiny")
def tiny(x, ctx):
    return x * 2 + 1


if __name__ == "__main__":
    serve()
