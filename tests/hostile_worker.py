"""A child process that loads or converts checkpoints for tests/test_hostile_checkpoints.py.

``python -m tests.hostile_worker MEMORY_MB`` caps its own address space at MEMORY_MB (so a
memory bomb that gets past the reader fails here instead of taking the machine down), then reads
one JSON request per line on stdin::

    {"mode": "load" | "convert", "checkpoint": PATH, "output": PATH, "classes": PATH or null}

and answers each with one JSON line on stdout::

    {"outcome": "ok" | "refused" | "unexpected", "type": ..., "message": (first 2000 characters),
     "length": (of the whole message), "peak_rss_mb": ...}

"refused" is a CheckpointError or ConversionError, what a hostile file should get; "unexpected" is
any other exception (with its traceback). A crash or a hang shows as a dead or silent child to the
parent, which runs every request under a time limit.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback


def handle(request: dict) -> dict:
    from weights_convert import ConversionError, convert_file
    from weights_convert.torch_pickle import CheckpointError, load_torch_checkpoint

    try:
        if request["mode"] == "load":
            load_torch_checkpoint(request["checkpoint"])
        else:
            convert_file(request["checkpoint"], request["output"], classes=request.get("classes"))
        return {"outcome": "ok"}
    except (CheckpointError, ConversionError) as exc:
        outcome, text = "refused", ""
        error: BaseException = exc
    except BaseException as exc:  # anything else is what the tests look for
        outcome, text = "unexpected", traceback.format_exc()[-3000:]
        error = exc
    message = str(error)
    return {"outcome": outcome, "type": type(error).__name__, "message": message[:2000], "length": len(message),
            "traceback": text}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not count the parent's
    memory at the time it forked this process)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    limit = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        result = handle(json.loads(line))
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
