"""The line protocol that `scaledown bench` speaks with its other sides (pytorch_bench.py,
llamacpp_bench.py): one JSON request per line on stdin, one JSON answer per line on stdout.

    {"op": "load", ...}                 -> the worker's load answer (its version)
    {"op": "prepare", "key": K, "work"} -> {"ok": true}, or {"ok": false, "reason"} for work
                                           that is not this side's
    {"op": "run", "key": K}             -> {"seconds": S}
    {"op": "peak"}                      -> {"peak_rss_mb": MB}
An exception answers {"error": "..."}; scaledown prints it and goes on without that side.
"""
import json
import resource
import sys


def peak_rss_mb():
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    across fork and exec, so a worker started by a process already holding a model would
    report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(worker, supported=None):
    """Answers requests until stdin closes. `worker.load(request)` and `worker.run(work)`
    do the side's work; `supported`: the work kinds it runs (None: all)."""
    work = {}
    for line in sys.stdin:
        try:
            r = json.loads(line)
            op = r["op"]
            if op == "load":
                reply(worker.load(r))
            elif op == "prepare":
                kind = r["work"]["kind"]
                if supported is None or kind in supported:
                    work[r["key"]] = r["work"]
                    reply({"ok": True})
                else:
                    reply({"ok": False, "reason": f"{kind} is not this side's work"})
            elif op == "run":
                reply({"seconds": worker.run(work[r["key"]])})
            elif op == "peak":
                reply({"peak_rss_mb": peak_rss_mb()})
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as e:
            reply({"error": f"{type(e).__name__}: {e}"})
