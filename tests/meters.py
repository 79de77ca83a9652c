"""Fake meters for the collector tests: real pseudo-terminals and a real pymodbus server."""

from __future__ import annotations

import asyncio
import os
import select
import threading


class PtyPair:
    """A pseudo-terminal: the collector opens ``port``; the test plays the meter on ``master``."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        os.set_blocking(self.master, False)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _, w, _ = select.select([], [self.master], [], 2)
            if not w:
                raise TimeoutError("pty master not writable")
            n = os.write(self.master, view)
            view = view[n:]

    def read(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return b""
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class PtyBridge:
    """Two pseudo-terminals joined like a null-modem cable (what socat does): a.port <-> b.port."""

    def __init__(self) -> None:
        self.a, self.b = PtyPair(), PtyPair()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        fds = {self.a.master: self.b, self.b.master: self.a}
        while not self._stop.is_set():
            r, _, _ = select.select(list(fds), [], [], 0.1)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if data:
                    try:
                        fds[fd].write(data)
                    except (OSError, TimeoutError):
                        pass

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.a.close()
        self.b.close()


class _Served:
    """A pymodbus server run on an event loop of its own thread (the tests' meters)."""

    server = None
    loop: asyncio.AbstractEventLoop | None = None

    def _serve(self, make_server) -> None:  # noqa: ANN001 - a callable returning a pymodbus server
        self.loop = asyncio.new_event_loop()
        self._t = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._t.start()

        async def make():
            self.server = make_server()
            await self.server.serve_forever(background=True)

        asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop is None:  # never started
            return
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._t.join(5)


class ModbusMeter(_Served):
    """A pymodbus server (TCP on loopback, or RTU on a serial port) holding a flow meter's registers.

    ``holding`` and ``input`` are lists of 16-bit values the test may change at any time.
    """

    def __init__(self, *, unit_id: int, holding: list[int], input: list[int], tcp_port: int | None = None, serial_port: str | None = None, baudrate: int = 9600) -> None:
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.holding, self.input = holding, input

        async def action(function_code, start_address, address, count, current_registers, set_values):
            src = self.holding if function_code == 3 else self.input
            for i in range(len(current_registers)):
                if start_address + i < len(src):
                    current_registers[i] = src[start_address + i]
            return None

        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        self.device = SimDevice(
            id=unit_id,
            simdata=(bits, list(bits), [SimData(0, count=len(holding), values=0, datatype=DataType.REGISTERS)],
                     [SimData(0, count=len(input), values=0, datatype=DataType.REGISTERS)]),
            action=action,
        )
        self.tcp_port, self.serial_port, self.baudrate = tcp_port, serial_port, baudrate

    def start(self) -> ModbusMeter:
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        if self.tcp_port:
            self._serve(lambda: ModbusTcpServer(self.device, address=("127.0.0.1", self.tcp_port)))
        else:
            self._serve(lambda: ModbusSerialServer(self.device, port=self.serial_port, baudrate=self.baudrate))
        return self


class ModbusBus(_Served):
    """A pymodbus RTU server answering for several unit ids on one serial port: meters on one RS485
    bus. ``units`` maps a unit id to its holding registers (a list the test may change at any time);
    a unit id in ``silent`` does not answer at all, as a meter that lost power."""

    def __init__(self, units: dict[int, list[int]], *, serial_port: str, baudrate: int = 9600) -> None:
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.units, self.silent = units, set()
        self.requests: dict[int, int] = dict.fromkeys(units, 0)  # requests seen per unit id (answered or not)

        def device(unit: int) -> SimDevice:
            async def action(function_code, start_address, address, count, current_registers, set_values):
                from pymodbus.exceptions import NoSuchIdException

                self.requests[unit] += 1
                if unit in self.silent:
                    raise NoSuchIdException(f"unit {unit} is silent")  # with ignore_missing_devices: no answer
                regs = self.units[unit]
                for i in range(len(current_registers)):
                    if start_address + i < len(regs):
                        current_registers[i] = regs[start_address + i]
                return None

            bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
            n = len(units[unit])
            return SimDevice(id=unit, simdata=(bits, list(bits), [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
                                               [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]), action=action)

        self.devices = [device(u) for u in units]
        self.serial_port, self.baudrate = serial_port, baudrate

    def start(self) -> ModbusBus:
        from pymodbus.server import ModbusSerialServer

        self._serve(lambda: ModbusSerialServer(self.devices, port=self.serial_port, baudrate=self.baudrate, ignore_missing_devices=True))
        return self
