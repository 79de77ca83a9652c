"""shared.crc: CRC-16/MODBUS against its catalogue check value and a bitwise reference (pure)."""

from shared.crc import crc16_modbus
from tests.exporter_check import crc16_modbus_bitwise


def test_check_value():
    assert crc16_modbus(b"123456789") == 0x4B37  # CRC-16/MODBUS catalogue check value
    assert crc16_modbus(b"") == 0xFFFF


def test_known_modbus_frame():
    # read holding registers, unit 1, address 0, count 10: the CRC goes on the wire low byte first
    crc = crc16_modbus(bytes.fromhex("01030000000A"))
    assert crc.to_bytes(2, "little") == bytes.fromhex("C5CD")


def test_matches_bitwise_and_continues():
    data = bytes(range(256)) * 3
    assert crc16_modbus(data) == crc16_modbus_bitwise(data)
    assert crc16_modbus(data[100:], crc16_modbus(data[:100])) == crc16_modbus(data)


def test_collector_and_exporter_use_it():
    from services.collector import frames
    from services.exporter import protocol

    assert frames.checksum("crc16-modbus", b"123456789") == 0x4B37
    assert protocol.crc16_modbus is crc16_modbus
