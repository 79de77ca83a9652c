"""A Modbus meter, RTU over RS485 or TCP, via pymodbus. The register map comes from config."""

from __future__ import annotations

import logging
import struct

from services.collector.frames import FrameError
from services.collector.registers import RegisterError, plan_reads, values_from_blocks
from services.collector.sources import Sample, Source, SourceIOError
from shared.settings import ModbusSettings

logger = logging.getLogger(__name__)


class ModbusSource(Source):
    polled = True

    def __init__(self, cfg: ModbusSettings, *, rtu: bool) -> None:
        self.cfg = cfg
        self.rtu = rtu
        self.name = "modbus-rtu" if rtu else "modbus-tcp"
        self.blocks = plan_reads(cfg.registers)
        self._client = None

    def describe(self) -> str:
        c = self.cfg
        where = f"{c.port} {c.baudrate} {c.bytesize}{c.parity}{c.stopbits}" if self.rtu else f"{c.host}:{c.tcp_port}"
        return f"{self.name} {where} unit {c.unit_id}, {len(self.blocks)} read(s) per reading"

    def open(self) -> None:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        c = self.cfg
        if self.rtu:
            client = ModbusSerialClient(
                c.port, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity, stopbits=c.stopbits, timeout=c.timeout_s, retries=c.retries
            )
            where = f"serial port {c.port} (collector.modbus.port)"
        else:
            client = ModbusTcpClient(c.host, port=c.tcp_port, timeout=c.timeout_s, retries=c.retries)
            where = f"{c.host}:{c.tcp_port} (collector.modbus.host / tcp_port)"
        if not client.connect():
            client.close()
            raise SourceIOError(f"cannot connect to Modbus meter at {where}")
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001
                logger.debug("closing Modbus client: %s", exc)

    def read(self, timeout: float) -> Sample | None:
        from pymodbus.exceptions import ModbusException

        if self._client is None:
            raise SourceIOError("Modbus client is not open")
        data = {}
        for block in self.blocks:
            fn = self._client.read_holding_registers if block.function == 3 else self._client.read_input_registers
            try:
                rr = fn(block.address, count=block.count, device_id=self.cfg.unit_id)
            except ModbusException as exc:
                raise SourceIOError(f"{self.name}: no valid answer from unit {self.cfg.unit_id}: {exc}") from exc
            if rr.isError():
                code = getattr(rr, "exception_code", "?")
                raise FrameError(
                    f"meter answered function {block.function} at {block.address} (+{block.count}) with Modbus exception {code}; check collector.modbus.registers",
                    f"fc={block.function} addr={block.address} count={block.count} exc={code}".encode(),
                )
            data[block] = list(rr.registers)
        raw = b"".join(struct.pack(">H", w) for b in self.blocks for w in data[b] if 0 <= w <= 0xFFFF)
        try:
            values = values_from_blocks(self.cfg.registers, data)
        except RegisterError as exc:
            raise FrameError(str(exc), raw) from None
        return Sample(values["flow_rate"], values["pressure"], raw=raw)
