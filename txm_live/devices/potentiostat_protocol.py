"""Names and codes of the potentiostat protocol (a leaf module: no ophyd).

Shared by the EPICS device (:mod:`txm_live.devices.potentiostat`, where the protocol is
documented), the simulated device and the simulated cell (:mod:`simulators.electrochem`),
so that modes, fault codes and component names cannot drift apart.
"""
from __future__ import annotations

__all__ = ["CONTROL_MODES", "FAULT_CODES", "LIMIT_ACTIONS", "POTENTIOSTAT_COMPONENTS", "check_mode",
           "current_from_c_rate_a"]

#: Modes a potentiostat step can run in: open circuit, constant current, constant voltage.
CONTROL_MODES = ("rest", "cc", "cv")
#: What a CC step does at its voltage cutoff: rest, or hold the cutoff voltage (CC–CV).
LIMIT_ACTIONS = ("rest", "cv")
#: Meaning of the ``fault`` readback; 0 = no fault.
FAULT_CODES = {0: "ok", 1: "voltage compliance", 2: "current compliance", 3: "cell disconnected"}
#: Component names every potentiostat device has.
POTENTIOSTAT_COMPONENTS = {
    "settings": ("current_setpoint_a", "c_rate", "voltage_setpoint_v", "voltage_max_v",
                 "voltage_min_v", "current_limit_a", "end_current_a", "on_limit",
                 "nominal_capacity_mah"),
    "readbacks": ("mode", "voltage_v", "current_a", "capacity_mah", "time_s", "step_time_s",
                  "limit_reached", "fault", "fault_message"),
    "commands": ("elapse", "clear_fault"),
}
#: Milliamp-hours per amp-hour.
MAH_PER_AH = 1000.0


def check_mode(name: str, value) -> str:
    """``value`` if it is one of :data:`CONTROL_MODES`, else a ``ValueError`` naming them."""
    if value not in CONTROL_MODES:
        raise ValueError(f"{name}: mode must be one of {CONTROL_MODES}, got {value!r}")
    return value


def current_from_c_rate_a(c_rate: float, nominal_capacity_mah: float) -> float:
    """Current (A) of ``c_rate`` (1/h) for a cell of ``nominal_capacity_mah`` (> 0 charges)."""
    if not nominal_capacity_mah > 0:
        raise ValueError(f"nominal_capacity_mah must be > 0 to use a C-rate, got {nominal_capacity_mah}")
    return float(c_rate) * float(nominal_capacity_mah) / MAH_PER_AH
