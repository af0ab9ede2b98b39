"""Run the simulated TXM IOC as a subprocess on 127.0.0.1: start, wait until it answers, stop, kill.

::

    from simulators.ioc import IOCProcess, ca_environment

    with IOCProcess(size=128, seed=1) as ioc:          # free port pair, waits for its PVs
        ioc.ca_env       # EPICS_CA_* / EPICS_CAS_* a client of this IOC needs
        ioc.kill()       # as a crash would (fault tests) ...
        ioc.start()      # ... and back, on the same ports

Channel Access clients read their environment once (pyepics when its context starts, at
the first use of ophyd), so a client process sets :func:`ca_environment` before that and
then talks to every IOC started on the same port pair (one at a time: ``ports=``).
The IOC serves on loopback only and announces itself (beacons) on loopback only.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import caproto as ca

from txm_live.devices.pv_names import SIM_IOC_PREFIX, SIM_READY_SUFFIX, TXMPrefixes

from .server import DEFAULT_TIME_SCALE

__all__ = ["IOCProcess", "ca_environment", "ca_ports_from_environment", "free_port_pair", "probe_pv", "put_pv",
           "LOOPBACK"]

LOOPBACK = "127.0.0.1"
#: How often the launcher asks whether the IOC is ready, s.
READY_POLL_S = 0.2


def free_port_pair(host: str = LOOPBACK) -> tuple[int, int]:
    """``(server_port, repeater_port)`` free now on ``host``: the server port for both UDP and
    TCP (Channel Access uses both), the repeater port for UDP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as repeater:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                repeater.bind((host, 0))
                return port, repeater.getsockname()[1]
    raise RuntimeError(f"no port free for both UDP and TCP found on {host}")


def ca_environment(server_port: int, repeater_port: int) -> dict[str, str]:
    """Environment for Channel Access clients and servers on loopback only, on these ports."""
    return {
        "EPICS_CA_SERVER_PORT": str(int(server_port)),
        "EPICS_CA_REPEATER_PORT": str(int(repeater_port)),
        "EPICS_CA_ADDR_LIST": LOOPBACK,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_BEACON_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_BEACON_PORT": str(int(repeater_port)),
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


def ca_ports_from_environment(env=None) -> tuple[int, int]:
    """``(EPICS_CA_SERVER_PORT, EPICS_CA_REPEATER_PORT)`` of ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    try:
        return int(env["EPICS_CA_SERVER_PORT"]), int(env["EPICS_CA_REPEATER_PORT"])
    except KeyError as exc:
        raise RuntimeError(f"{exc.args[0]} is not set; set ca_environment(*free_port_pair()) first") from None


# ---- a one-shot Channel Access read, without touching the process's CA environment ----
def _remaining(deadline: float, pv_name: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{pv_name} did not answer in time")
    return left


def _search(pv_name: str, host: str, port: int, deadline: float):
    broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
    cid = random.randint(0, 65535)
    request = broadcaster.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION),
                               ca.SearchRequest(pv_name, cid, ca.DEFAULT_PROTOCOL_VERSION))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(request, (host, port))
        while True:
            udp.settimeout(_remaining(deadline, pv_name))
            try:
                data, address = udp.recvfrom(ca.MAX_UDP_RECV)
            except (TimeoutError, ConnectionRefusedError):
                raise TimeoutError(f"no Channel Access server on {host}:{port} knows {pv_name}") from None
            commands = broadcaster.recv(data, address)
            broadcaster.process_commands(commands)
            for command in commands:
                if isinstance(command, ca.SearchResponse) and command.cid == cid:
                    return ca.extract_address(command)


def _request(pv_name: str, address, deadline: float, make_request, response_type):
    """Connect a channel to ``pv_name`` at ``address``, send ``make_request(channel)`` and
    return the ``response_type`` message that answers it."""
    circuit = ca.VirtualCircuit(our_role=ca.CLIENT, address=address, priority=0)
    with socket.create_connection(address, timeout=_remaining(deadline, pv_name)) as sock:

        def send(*commands):
            sock.sendall(b"".join(circuit.send(*commands)))

        def receive():
            sock.settimeout(_remaining(deadline, pv_name))
            data = sock.recv(4096)
            if not data:
                raise ConnectionError(f"{address} closed the connection while serving {pv_name}")
            commands, _ = circuit.recv(data)
            for command in commands:
                circuit.process_command(command)
            return commands

        send(ca.VersionRequest(priority=0, version=ca.DEFAULT_PROTOCOL_VERSION),
             ca.HostNameRequest(socket.gethostname()), ca.ClientNameRequest("txm-live-launcher"))
        channel = ca.ClientChannel(pv_name, circuit)
        send(channel.create())
        while channel.states[ca.CLIENT] is not ca.CONNECTED:
            receive()
        request = make_request(channel)
        send(request)
        while True:
            for command in receive():
                if isinstance(command, ca.ErrorResponse):
                    raise RuntimeError(f"{pv_name}: the server refused the request: {command}")
                if isinstance(command, response_type) and command.ioid == request.ioid:
                    return command


def probe_pv(pv_name: str, *, port: int, host: str = LOOPBACK, timeout_s: float = 1.0):
    """Read one scalar PV from the server at ``host:port`` (search by UDP, read over TCP).

    Independent of the process's ``EPICS_*`` environment and of any CA client library
    already running in it. Raises ``TimeoutError`` when nothing answers in ``timeout_s``.
    """
    deadline = time.monotonic() + float(timeout_s)
    try:
        address = _search(pv_name, host, port, deadline)
        response = _request(pv_name, address, deadline, lambda ch: ch.read(), ca.ReadNotifyResponse)
    except (socket.timeout, ConnectionError) as exc:
        raise TimeoutError(f"{pv_name} on {host}:{port}: {exc}") from None
    return response.data[0]


def put_pv(pv_name: str, value, *, port: int, host: str = LOOPBACK, timeout_s: float = 10.0) -> None:
    """Write one scalar PV and wait until the server has processed it (put completion).

    Like :func:`probe_pv`, independent of the process's CA environment.
    """
    deadline = time.monotonic() + float(timeout_s)
    try:
        address = _search(pv_name, host, port, deadline)
        _request(pv_name, address, deadline, lambda ch: ch.write((value,), notify=True), ca.WriteNotifyResponse)
    except (socket.timeout, ConnectionError) as exc:
        raise TimeoutError(f"{pv_name} on {host}:{port}: {exc}") from None


class IOCProcess:
    """The simulated TXM IOC in a subprocess (``python -m simulators.ioc``) on 127.0.0.1.

    Parameters
    ----------
    size : int
        Square image size in pixels (128 → 16×16 binning, 320 nm pixels).
    seed : int
        Seed of the simulated sample, drift and detector (as ``SimConfig.seed``).
    energy_ev : float
        Starting energy (zone plate and detector in focus for it).
    time_scale : float
        Wall seconds per second of beamline time.
    root : str
        Prefix in front of every PV name.
    ports : (int, int), optional
        ``(server_port, repeater_port)``; a free pair when omitted. A client process
        must use the same ports (see :func:`ca_environment`).
    log_path : path, optional
        Where the IOC's output goes (default: an anonymous temporary file, quoted in
        errors).
    """

    def __init__(self, *, size: int = 128, seed: int = 0, energy_ev: float = 8333.0,
                 time_scale: float = DEFAULT_TIME_SCALE, root: str = "", ports: tuple[int, int] | None = None,
                 log_path=None):
        self.size = int(size)
        self.seed = int(seed)
        self.energy_ev = float(energy_ev)
        self.time_scale = float(time_scale)
        self.root = str(root)
        self.ports = tuple(int(p) for p in ports) if ports is not None else free_port_pair()
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def server_port(self) -> int:
        return self.ports[0]

    @property
    def ca_env(self) -> dict[str, str]:
        """The ``EPICS_*`` variables a client of this IOC sets (loopback, these ports)."""
        return ca_environment(*self.ports)

    @property
    def prefixes(self) -> TXMPrefixes:
        """The PV layout the IOC serves (for :func:`txm_live.devices.txm.make_epics_txm`)."""
        return TXMPrefixes().with_root(self.root)

    @property
    def ready_pv(self) -> str:
        return self.root + SIM_IOC_PREFIX + SIM_READY_SUFFIX

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "simulators.ioc", "--size", str(self.size), "--seed", str(self.seed),
                "--energy-ev", repr(self.energy_ev), "--time-scale", repr(self.time_scale), "--root", self.root,
                "--interfaces", LOOPBACK, "--exit-with-parent"]

    def start(self, timeout_s: float = 60.0) -> IOCProcess:
        """Start the IOC and wait until its PVs answer (its Ready PV reads 1)."""
        if self.running:
            raise RuntimeError(f"the IOC on port {self.server_port} is already running (pid {self._process.pid})")
        self._close_log()
        self._log = open(self.log_path, "w+b") if self.log_path else tempfile.TemporaryFile()
        env = {**os.environ, **self.ca_env}
        self._process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        try:
            self.wait_until_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the Ready PV reads 1; a dead IOC or a timeout raises with its output."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise RuntimeError(f"the IOC exited with code {self._process.returncode} before it was ready:\n"
                                   f"{self.output_tail()}")
            try:
                if int(probe_pv(self.ready_pv, port=self.server_port, timeout_s=READY_POLL_S)) == 1:
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the IOC did not answer {self.ready_pv} on {LOOPBACK}:{self.server_port} "
                                   f"within {timeout_s} s:\n{self.output_tail()}")
            time.sleep(READY_POLL_S)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (the IOC closes its files), then SIGKILL after ``timeout_s``; the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout_s)
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL now, as a crash would: files are left as the last flush left them."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10.0)

    def reset(self, timeout_s: float = 30.0) -> None:
        """Fresh simulated state without a restart (``TXMSIM:Reset``): physics rebuilt from
        the seed, beamline clock 0, axes at their starting positions, counters 0."""
        put_pv(self.root + SIM_IOC_PREFIX + "Reset", 1, port=self.server_port, timeout_s=timeout_s)

    def restart(self, timeout_s: float = 60.0) -> IOCProcess:
        self.stop()
        return self.start(timeout_s)

    def output_tail(self, n_chars: int = 3000) -> str:
        """The end of the IOC's output so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - n_chars))
        return self._log.read().decode(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> IOCProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._close_log()
