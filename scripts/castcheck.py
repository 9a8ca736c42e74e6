#!/usr/bin/env python3
"""Reads an asciicast v2 file with the reference parser (PyPI asciinema 2.4.0, asciinema.asciicast.v2) and
prints what it found as one JSON object, for the tests:

  castcheck.py FILE.cast

{"header": {...}, "events": N, "codes": {"o": N, ...}, "output_len": N, "output_sha256": "...",
 "output_hex_head": "...", "output": [[time, end_offset], ...] (at most 10000), "markers": [[time, text], ...],
 "resizes": [[time, "COLSxROWS"], ...], "input": "...", "decreasing": 0}

Output data is turned back into bytes with "surrogateescape" (how Porthole writes bytes that are not UTF-8).
Exits 1 with a message when the file does not parse.
"""
import hashlib
import json
import sys

from asciinema.asciicast import v2


def main(path):
    with open(path, encoding="utf-8") as f:
        first = f.readline()
        with v2.open_from_file(first, f) as cast:
            header = cast.v2_header
            codes, markers, resizes, times = {}, [], [], []
            digest, length, head, last, decreasing, inputs = hashlib.sha256(), 0, b"", 0.0, 0, []
            count = 0
            for ev in cast.events():
                t, code, data = ev
                count += 1
                if not isinstance(t, (int, float)) or not isinstance(data, str):
                    raise ValueError(f"bad event {ev!r}")
                if t < last:
                    decreasing += 1
                last = t
                codes[code] = codes.get(code, 0) + 1
                if code == "o":
                    b = data.encode("utf-8", "surrogateescape")
                    digest.update(b)
                    length += len(b)
                    if len(head) < 64:
                        head = (head + b)[:64]
                    if len(times) < 10000:
                        times.append([t, length])
                elif code == "m":
                    markers.append([t, data])
                elif code == "r":
                    resizes.append([t, data])
                elif code == "i":
                    inputs.append(data)
    print(json.dumps({
        "header": header, "events": count, "codes": codes, "output_len": length,
        "output_sha256": digest.hexdigest(), "output_hex_head": head.hex(), "output": times,
        "markers": markers, "resizes": resizes, "input": "".join(inputs), "decreasing": decreasing,
    }))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # noqa: BLE001 - any failure means the file did not parse
        print(f"castcheck: {sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
