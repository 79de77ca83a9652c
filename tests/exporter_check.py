"""An implementation of the device-side integrity check that shares no code with the exporter.

Table-free, bitwise CRC-16/MODBUS, written from the algorithm's definition (reflected polynomial
0xA001, initial value 0xFFFF, no final xor), the way a device would do it in a few lines of C. Used
by the tests and run as a separate reader process (``python -m tests.exporter_check FILE SECONDS``).
"""

from __future__ import annotations

import json
import sys
import time


def crc16_modbus_bitwise(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 0x0001:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def verify(data: bytes) -> bool:
    """What a device does: the last line is CRC,<n>,<XXXX>; n CR LF lines and the CRC precede it."""
    if not data.endswith(b"\r\n"):
        return False
    i = data.rfind(b"\r\n", 0, len(data) - 2)
    body, last = data[: i + 2], data[i + 2 : -2]
    parts = last.split(b",")
    if len(parts) != 3 or parts[0] != b"CRC" or len(parts[2]) != 4:
        return False
    try:
        n, crc = int(parts[1]), int(parts[2], 16)
    except ValueError:
        return False
    if body.count(b"\r\n") != n or body.count(b"\n") != n:
        return False
    if not body.startswith(b"FLOWWATCH,"):
        return False
    return crc16_modbus_bitwise(body) == crc


def _reader(path: str, stop_file: str, ready_file: str, max_seconds: float) -> None:
    """Read ``path`` in a tight loop until ``stop_file`` exists; report what was seen as JSON."""
    import os

    deadline = time.monotonic() + max_seconds
    reads = bad = missing = 0
    seen: set[bytes] = set()
    first_bad = None
    open(ready_file, "w").close()
    while time.monotonic() < deadline:
        if reads % 64 == 0 and os.path.exists(stop_file):
            break
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        if verify(data):
            if len(seen) < 100_000:
                seen.add(data[-8:])
        else:
            bad += 1
            if first_bad is None:
                first_bad = data.decode("latin-1")[:2000]
    json.dump({"reads": reads, "bad": bad, "missing": missing, "distinct": len(seen), "first_bad": first_bad}, sys.stdout)


if __name__ == "__main__":
    _reader(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
