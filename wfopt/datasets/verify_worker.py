"""A math-verify worker process: `python -m wfopt.datasets.verify_worker [MEMORY_MB]`.

Protocol, one JSON object per line: it first writes {"ready": true} (or {"ready": false,
"error": ...} and exits), then answers each {"gold", "prediction", "timeout"} request with
{"equal": bool} or {"error": "..."}. It runs math-verify in its main thread, so math-verify's
own signal-based timeouts work here; the parent still kills it when a reply is late (a hang
inside C code such as a huge integer power ignores signals). Anything else written to stdout
goes to stderr, so it cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _equal(gold: str, prediction: str, timeout: int) -> bool:
    from math_verify import parse, verify

    gold_text = gold if "\\boxed" in gold else "\\boxed{" + gold + "}"
    gold_parsed = parse(gold_text, parsing_timeout=timeout)
    predicted = parse(prediction, parsing_timeout=timeout)
    return bool(verify(gold_parsed, predicted, timeout_seconds=timeout))


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if len(sys.argv) > 1:
        limit = int(sys.argv[1]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        import math_verify  # noqa: F401  (imported now, so requests do not pay for it)
    except Exception as err:
        protocol.write(json.dumps({"ready": False, "error": f"{type(err).__name__}: {err}"}) + "\n")
        return
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        try:
            equal = _equal(request["gold"], request["prediction"], request["timeout"])
            # math-verify answers False when its own timeout fired: report that as a timeout
            slow = not equal and time.monotonic() - start >= request["timeout"]
            reply = {"error": "timeout", "timeout": True} if slow else {"equal": equal}
        except BaseException as err:  # parser crash, MemoryError, math-verify's own timeout
            reply = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
