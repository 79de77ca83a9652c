"""CRC-16/MODBUS: the checksum of Modbus RTU frames, of serial meter frames and of the export files.

Reflected polynomial 0x8005 (0xA001), initial value 0xFFFF, no final XOR; the catalogue check value
is ``crc16_modbus(b"123456789") == 0x4B37``. Table-driven; pure.
"""

from __future__ import annotations


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc16_modbus(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/MODBUS of ``data``; pass a previous result as ``crc`` to continue over more bytes."""
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc
