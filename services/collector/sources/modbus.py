"""Modbus meters, RTU over RS485 or TCP, via pymodbus. The register map comes from config.

Several meters on one RS485 bus (one serial port, a unit id each) or behind one TCP gateway share
one :class:`ModbusLink` (one pymodbus client); the collector reads them in turn from one thread. A
unit that does not answer is not a failed port: its read returns None (counted as no answer) and the
port stays open for the others. Only a port or connection that fails is closed and reopened.
"""

from __future__ import annotations

import logging
import struct

from services.collector.frames import FrameError
from services.collector.registers import RegisterError, plan_reads, values_from_blocks
from services.collector.sources import Sample, Source, SourceIOError
from shared.messages import SIGNALS
from shared.settings import ModbusSettings

logger = logging.getLogger(__name__)


class ModbusLink:
    """One pymodbus client: a serial port (RTU) or a TCP connection, shared by the meters on it."""

    def __init__(self, cfg: ModbusSettings, *, rtu: bool) -> None:
        self.cfg = cfg
        self.rtu = rtu
        self.client = None

    @staticmethod
    def line(c: ModbusSettings) -> str:
        return f"{c.baudrate} {c.bytesize}{c.parity}{c.stopbits}"

    def describe(self) -> str:
        c = self.cfg
        return f"{c.port} {self.line(c)}" if self.rtu else f"{c.host}:{c.tcp_port}"

    def open(self) -> None:
        if self.client is not None:
            return
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
        self.client = client

    @property
    def is_open(self) -> bool:
        return self.client is not None and bool(self.client.connected)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001
                logger.debug("closing Modbus client: %s", exc)


class ModbusSource(Source):
    polled = True

    def __init__(self, cfg: ModbusSettings, *, rtu: bool, link: ModbusLink | None = None) -> None:
        self.cfg = cfg
        self.rtu = rtu
        self.name = "modbus-rtu" if rtu else "modbus-tcp"
        self.blocks = plan_reads(cfg.registers)
        self.link = link or ModbusLink(cfg, rtu=rtu)

    def describe(self) -> str:
        return f"{self.name} {self.link.describe()} unit {self.cfg.unit_id}, {len(self.blocks)} read(s) per reading"

    def group(self) -> object:
        return self.link

    def open(self) -> None:
        self.link.open()

    def close(self) -> None:
        self.link.close()

    def read(self, timeout: float) -> Sample | None:
        """The meter's values, or None when the unit did not answer (timeouts and retries of
        ``collector.modbus``) while the port itself is fine."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        client = self.link.client
        if client is None:
            raise SourceIOError("Modbus client is not open")
        data = {}
        for block in self.blocks:
            fn = client.read_holding_registers if block.function == 3 else client.read_input_registers
            try:
                rr = fn(block.address, count=block.count, device_id=self.cfg.unit_id)
            except ConnectionException as exc:
                raise SourceIOError(f"{self.name} {self.link.describe()} failed: {exc}") from exc
            except ModbusIOException as exc:
                if self.link.is_open:
                    logger.debug("unit %s did not answer: %s", self.cfg.unit_id, exc)
                    return None  # a silent unit; the bus stays open for the others
                raise SourceIOError(f"{self.name}: no valid answer from unit {self.cfg.unit_id}: {exc}") from exc
            except ModbusException as exc:
                raise SourceIOError(f"{self.name}: no valid answer from unit {self.cfg.unit_id}: {exc}") from exc
            if rr.isError():
                code = getattr(rr, "exception_code", "?")
                raise FrameError(
                    f"unit {self.cfg.unit_id} answered function {block.function} at {block.address} (+{block.count}) with Modbus exception {code}; check collector.modbus.registers",
                    f"fc={block.function} addr={block.address} count={block.count} exc={code}".encode(),
                )
            data[block] = list(rr.registers)
        raw = b"".join(struct.pack(">H", w) for b in self.blocks for w in data[b] if 0 <= w <= 0xFFFF)
        try:
            values = values_from_blocks(self.cfg.registers, data)
        except RegisterError as exc:
            raise FrameError(str(exc), raw) from None
        extra = {k: v for k, v in values.items() if k not in SIGNALS}
        return Sample(values.get("flow_rate"), values.get("pressure"), raw=raw, extra=extra or None)
