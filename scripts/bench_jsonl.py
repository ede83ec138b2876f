"""Reads the JSON lines the benchmark scripts collect (amad's `--json` output and the PyTorch
scripts'): the figures grouped by a key, the peak resident memories reported beside them, and
any other lines (amad's device memory after a step)."""
import json


def load(path, key):
    """(rows by r[key], peak_resident_bytes values, other lines) of the JSON lines in `path`."""
    rows, peaks, others = {}, [], []
    for line in open(path):
        r = json.loads(line)
        if "peak_resident_bytes" in r:
            peaks.append(r["peak_resident_bytes"])
        elif key in r:
            rows.setdefault(r[key], []).append(r)
        else:
            others.append(r)
    return rows, peaks, others
