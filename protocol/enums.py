"""Protocol enumerations (reference Appendix A) as lower-case snake_case names.

Every function maps a wire code to its name and falls back to `unknown_XX` (two upper-case hex
digits) for codes the reference does not define, so callers can always publish a name beside
the raw code (`"status": "charging", "status_code": 1`).
"""

from __future__ import annotations

from collections.abc import Mapping


class Namer:
    """Code -> name for one enumeration; `table` is exposed for generated code."""

    __slots__ = ("table",)

    def __init__(self, table: Mapping[int, str]) -> None:
        self.table = table

    def __call__(self, code: int) -> str:
        found = self.table.get(code)
        return found if found is not None else unknown(code)


def unknown(code: int) -> str:
    """Name of a code the reference does not define."""
    return f"unknown_{code:02X}"


_namer = Namer


# A.1 / 4.2 — top byte of the physical ID.
DEVICE_KINDS: dict[int, str] = {
    0x03: "single_socket",
    0x04: "dual_socket",
    0x05: "ten_port",
    0x06: "sixteen_port",
    0x07: "twelve_port",
    0x09: "host",
    0x0A: "leakage_host",
}
device_kind_name = _namer(DEVICE_KINDS)

# A.4 — port status in 0x01 / 0x21.
PORT_STATUSES: dict[int, str] = {
    0x00: "idle",
    0x01: "charging",
    0x02: "plugged_not_started",
    0x03: "plugged_full",
    0x04: "cannot_meter",
    0x05: "float_charging",
    0x06: "memory_damaged",
    0x07: "contact_spring_stuck",
    0x08: "poor_contact_or_fuse",
    0x09: "relay_welded",
    0x0A: "hall_sensor_damaged",
    0x0B: "precheck_relay_or_fuse",
    0x0D: "precheck_short_circuit",
    0x0E: "precheck_relay_welded",
    0x0F: "card_reader_fault",
    0x10: "detection_circuit_fault",
}
port_status_name = _namer(PORT_STATUSES)

# A.5 — port status in 0x06 (other values are error values to ignore).
CHARGING_STATUSES: dict[int, str] = {
    1: "charging",
    2: "waiting_for_charger",
    3: "full",
    5: "float_charging",
}
charging_status_name = _namer(CHARGING_STATUSES)

# A.6 is a bit field: see `work_mode_flags`.
WORK_MODE_BITS: tuple[tuple[str, str], ...] = (
    ("networked", "card"),
    ("rn8209", "bl0939"),
    ("no_short_precheck", "short_precheck"),
    ("optocoupler_detection", "indicator_light"),
)


def work_mode_flags(mode: int) -> list[str]:
    """A.6 work-mode byte -> one name per defined bit (bits 0..3)."""
    return [pair[(mode >> bit) & 1] for bit, pair in enumerate(WORK_MODE_BITS)]


# A.7 — card type (0x02).
CARD_TYPES: dict[int, str] = {
    0: "old_card",
    1: "new_card",
    2: "balance_card",
    3: "uid_only",
    4: "social_security_card",
}
card_type_name = _namer(CARD_TYPES)

# A.8 — account status (0x02 reply).
ACCOUNT_STATUSES: dict[int, str] = {
    0x00: "ok",
    0x01: "card_not_registered",
    0x02: "please_bind",
    0x03: "please_unbind",
    0x04: "already_charging",
    0x05: "use_count_exceeded",
    0x06: "insufficient_balance",
    0x07: "pass_expired",
    0x08: "port_fault",
    0x09: "convert_balance_card",
    0x0A: "time_limit_exceeded",
    0x0B: "other_operator",
    0x0C: "device_not_registered",
    0x0D: "buy_monthly_pass",
    0x0E: "outside_area_insufficient_balance",
    0x0F: "monthly_device_unusable",
    0x10: "monthly_device_outside_area",
    0x11: "temporary_device_unusable",
    0x12: "temporary_device_outside_area",
}
account_status_name = _namer(ACCOUNT_STATUSES)

# A.9 — rate mode (0x02 reply, 0x82).
RATE_MODES: dict[int, str] = {0: "time", 1: "monthly_pass", 2: "energy", 3: "per_use"}
rate_mode_name = _namer(RATE_MODES)

# A.10 — mode of 0x8A.
ADJUST_MODES: dict[int, str] = {
    0: "time_no_auto_stop",
    1: "time_auto_stop",
    2: "energy_auto_stop",
}
adjust_mode_name = _namer(ADJUST_MODES)

# A.11 — start mode (0x03, 0x04, 0x06, 0x43).
START_MODES: dict[int, str] = {0: "offline_card", 1: "online", 3: "verification_code"}
start_mode_name = _namer(START_MODES)

# A.12 — stop reason (0x03, 0x43).
STOP_REASONS: dict[int, str] = {
    0x01: "full",
    0x02: "max_charge_time",
    0x03: "preset_time_reached",
    0x04: "preset_energy_reached",
    0x05: "unplugged",
    0x06: "overload",
    0x07: "stopped_by_server",
    0x08: "dynamic_overload",
    0x09: "power_too_low",
    0x0A: "ambient_over_temperature",
    0x0B: "port_over_temperature",
    0x0C: "over_current",
    0x0D: "unplugged_spring",
    0x0E: "no_power",
    0x0F: "precheck_relay_or_fuse",
    0x10: "water_immersion",
    0x11: "fire_extinguishing_this_port",
    0x12: "fire_extinguishing_other_port",
    0x13: "cabinet_opened_by_password",
    0x14: "door_not_closed",
    0x15: "external_operation",
    0x16: "card_swipe",
    0x17: "forced_by_server",
    0x18: "fire_protection",
    0x19: "memory_error",
    0x1A: "over_voltage",
    0x1B: "under_voltage",
    0x1C: "low_power_cut_off",
}
stop_reason_name = _namer(STOP_REASONS)

# A.13 — 0x82 reply result.
CHARGE_RESULTS: dict[int, str] = {
    0x00: "ok",
    0x01: "no_charger",
    0x02: "already_in_state",
    0x03: "port_fault",
    0x04: "no_such_port",
    0x05: "several_ports_waiting",
    0x06: "over_total_power",
    0x07: "memory_damaged",
    0x08: "precheck_relay_or_fuse",
    0x09: "precheck_relay_welded",
    0x0A: "precheck_short_circuit",
    0x0B: "smoke_alarm",
    0x0C: "over_voltage",
    0x0D: "under_voltage",
    0x0E: "no_response",
}
charge_result_name = _namer(CHARGE_RESULTS)

# A.13 "executed?" column: the reference advises treating 0, 3 and 9 as carried out.
CHARGE_RESULTS_EXECUTED: frozenset[int] = frozenset({0x00, 0x03, 0x09})


def charge_result_executed(code: int) -> bool:
    """Whether a 0x82 result means the device carried the command out (A.13, ambiguity 26)."""
    return code in CHARGE_RESULTS_EXECUTED


# A.14 — 0x8A reply result.
ADJUST_RESULTS: dict[int, str] = {
    0: "ok",
    1: "not_charging",
    2: "below_current_value",
    3: "no_such_mode_or_port",
}
adjust_result_name = _namer(ADJUST_RESULTS)

# A.15 — results of 0xE0/E1/E2 (0xF8/F9/FA use 0 ok, 1 resend: the same first two names).
UPGRADE_RESULTS: dict[int, str] = {
    0x00: "ok",
    0x01: "resend_packet",
    0x02: "firmware_checksum_error",
    0x03: "wrong_device_type",
    0x04: "no_check_packet",
    0x05: "device_type_authentication_failed",
}
upgrade_result_name = _namer(UPGRADE_RESULTS)

# A.16 — alarm type (0x42).
ALARM_TYPES: dict[int, str] = {
    1: "power_failure",
    2: "water_immersion",
    3: "hot_melt",
    4: "smoke",
    5: "temperature",
    6: "water_level",
    7: "door_sprang_open",
}
alarm_type_name = _namer(ALARM_TYPES)

# A.17 — push type (0x44).
PUSH_TYPES: dict[int, str] = {1: "door_not_closed"}
push_type_name = _namer(PUSH_TYPES)

# A.18 — RTC module (0x11).
RTC_MODULES: dict[int, str] = {0: "none", 1: "sd2068", 2: "bm8563"}
rtc_module_name = _namer(RTC_MODULES)

# A.19 — communication module type (0x11).
MODULE_TYPES: dict[int, str] = {
    0x01: "wifi_b2",
    0x02: "2g_gm3",
    0x03: "4g_7s4_g405",
    0x04: "2g_gm35",
    0x05: "nb_iot_m5311",
    0x06: "4g_cat1_gm5",
    0x07: "4g_cat1_gm5_opencpu",
    0x08: "4g_cat1_gm6",
}
module_type_name = _namer(MODULE_TYPES)

# A.19 — module type in 0x34 / 0x0A.
SERVER_MODULE_TYPES: dict[int, str] = {1: "wifi", 2: "2g", 3: "4g"}
server_module_type_name = _namer(SERVER_MODULE_TYPES)

# A.3 — host type (0x11).
HOST_TYPES: dict[int, str] = {
    0x01: "old_485_host",
    0x02: "old_lora_host",
    0x03: "new_lora_host",
    0x04: "wireless_433_host",
    0x05: "ap262_lora_host",
    0x50: "ap262_combined_host",
    0x51: "leakage_host",
    # Not in [H]: reported in 0x11 by hosts in the field (issue 16); model unknown.
    0x55: "field_host_55",
}
host_type_name = _namer(HOST_TYPES)

# A.2 — device type; only the values that identify one model (old models reuse 1..4).
DEVICE_TYPES: dict[int, str] = {
    0x05: "old_lora_high_power",
    0x06: "old_485",
    0x07: "old_485_high_power",
    0x08: "old_nb",
    0x09: "old_nb_high_power",
    0x0A: "old_wireless",
    0x0B: "old_wireless_high_power",
    0x10: "new_485",
    0x14: "new_nb",
    0x20: "new_multi_port",
    0x21: "new_485_dual_mode",
    0x22: "new_nb_dual_mode",
    0x23: "new_gm35_dual_mode",
    0x24: "new_wifi_dual_mode",
    0x25: "new_lora_dual_mode",
    0x26: "new_hw3000_dual_mode",
    0x27: "new_gm5_dual_mode",
    0x28: "new_485_dual_mode_f460",
    0x29: "new_multi_port_f460",
    0x30: "new_twelve_port_f460",
    # Not in [D]: reported by chargers in the field (issue 16); model unknown.
    0x31: "field_device_31",
    0x70: "oldest_multi_port",
    0x71: "oldest_multi_port_dipeng",
}
device_type_name = _namer(DEVICE_TYPES)

# A.20 — TC card mode (0x8F) and work mode (0x8D).
TC_CARD_MODES: dict[int, str] = {
    0x00: "time",
    0x01: "per_use",
    0x03: "energy",
    0x04: "fixed_charge",
    0x05: "home",
    0x06: "free_choice",
}
tc_card_mode_name = _namer(TC_CARD_MODES)

WORK_MODES: dict[int, str] = {0: "networked", 1: "card"}
work_mode_name = _namer(WORK_MODES)
