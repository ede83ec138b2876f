"""Reads the JSON lines the benchmark scripts collect (amad's `--json` output and the PyTorch
scripts'): the figures grouped by a key, and the peak resident memories reported beside them."""
import json


def load(path, key):
    """(rows by r[key], peak_resident_bytes values) of the JSON lines in `path`."""
    rows, peaks = {}, []
    for line in open(path):
        r = json.loads(line)
        if "peak_resident_bytes" in r:
            peaks.append(r["peak_resident_bytes"])
        else:
            rows.setdefault(r[key], []).append(r)
    return rows, peaks
