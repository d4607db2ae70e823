"""(command, sender) -> payload decoder: the one table that says which model a frame carries."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from protocol.commands import common
from protocol.commands._model import DEVICE, SERVER, Payload, Sender
from protocol.errors import PayloadError

Decoder = Callable[[bytes], Payload]


def _model(name: str) -> type[Payload]:
    """`module.Class` under protocol.commands, imported on first use: the model modules take
    most of the codec's import time, and a decode run meets only a few of them."""
    module, _, cls = name.partition(".")
    model: type[Payload] = getattr(importlib.import_module(f"protocol.commands.{module}"), cls)
    return model


def _upgrade_request(data: bytes) -> Payload:
    # Tolerant decoding of 0x05: the 2024 layout only when exactly 7 bytes.
    if len(data) == 7:
        return _model("upgrade.UpgradeRequest").decode(data)
    return _model("upgrade.LegacyUpgradeRequest").decode(data)


def _host_upgrade(data: bytes) -> Payload:
    # 0xFA from the server: no data = trigger, otherwise a firmware packet.
    if not data:
        return common.Empty.decode(data)
    return _model("upgrade.FirmwarePacket").decode(data)


_result = common.ResultReply.decode
_empty = common.Empty.decode

# (command, sender) -> the model (`module.Class`, imported when first needed) or a decoder.
_SPEC: dict[tuple[int, Sender], str | Decoder] = {
    (0x00, DEVICE): "host.BusPoll",
    (0x01, DEVICE): "heartbeats.LegacyHeartbeat",
    (0x01, SERVER): _result,
    (0x02, DEVICE): "card.CardSwipe",
    (0x02, SERVER): "card.CardSwipeReply",
    (0x03, DEVICE): "charging.Settlement",
    (0x03, SERVER): _result,
    (0x04, DEVICE): "charging.OrderConfirmation",
    (0x04, SERVER): "charging.OrderConfirmationReply",
    (0x05, DEVICE): _upgrade_request,
    (0x06, DEVICE): "charging.PortPowerReport",
    (0x09, DEVICE): "host.TestModeReport",
    (0x0A, DEVICE): "host.ServerAddress",
    (0x11, DEVICE): "host.HostHeartbeat",
    (0x12, DEVICE): "heartbeats.TimeRequest",
    (0x12, SERVER): "heartbeats.TimeReply",
    (0x15, DEVICE): "field.HostUpgradeRequest",
    (0x15, SERVER): "field.HostUpgradeAnswer",
    (0x17, DEVICE): "host.HostStatus",
    (0x20, DEVICE): "heartbeats.Registration",
    (0x20, SERVER): _result,
    (0x21, DEVICE): "heartbeats.Heartbeat",
    (0x21, SERVER): _result,
    (0x22, DEVICE): "heartbeats.TimeRequest",
    (0x22, SERVER): "heartbeats.TimeReply",
    (0x31, SERVER): _empty,
    (0x31, DEVICE): _result,
    (0x32, SERVER): _empty,
    (0x32, DEVICE): _result,
    (0x33, SERVER): _empty,
    (0x33, DEVICE): _result,
    (0x34, SERVER): "host.ServerAddress",
    (0x34, DEVICE): _result,
    (0x35, DEVICE): "host.ExtensionVersions",
    (0x3A, SERVER): "host.FskParams",
    (0x3A, DEVICE): _result,
    (0x3B, DEVICE): "host.FskParamsRequest",
    (0x41, DEVICE): "cabinet.CabinetHeartbeat",
    (0x42, DEVICE): "cabinet.Alarm",
    (0x43, DEVICE): "charging.ChargeFinished",
    (0x44, DEVICE): "cabinet.PortPush",
    (0x72, SERVER): "cabinet.CabinetStop",
    (0x72, DEVICE): "cabinet.CabinetStopReply",
    (0x81, SERVER): _empty,
    (0x82, SERVER): "charging.ChargeControl",
    (0x82, DEVICE): "charging.ChargeControlReply",
    (0x83, SERVER): "params.RunningParams1",
    (0x83, DEVICE): _result,
    (0x84, SERVER): "params.RunningParams2",
    (0x84, DEVICE): _result,
    (0x85, SERVER): "params.ChargeLimits",
    (0x85, DEVICE): _result,
    (0x86, SERVER): "params.CardParams",
    (0x86, DEVICE): _result,
    (0x87, SERVER): _empty,
    (0x87, DEVICE): _result,
    (0x88, SERVER): _empty,
    (0x88, DEVICE): _result,
    (0x89, SERVER): "params.PlayVoice",
    (0x89, DEVICE): _result,
    (0x8A, SERVER): "charging.AdjustCharging",
    (0x8A, DEVICE): _result,
    (0x8B, SERVER): "params.EepromRead",
    (0x8B, DEVICE): "params.EepromReadReply",
    (0x8C, SERVER): "params.EepromWrite",
    (0x8C, DEVICE): _result,
    (0x8D, SERVER): "params.WorkModeSet",
    (0x8D, DEVICE): _result,
    (0x8E, SERVER): "params.QrCodeSetup",
    (0x8E, DEVICE): _result,
    (0x8F, SERVER): "params.CardModeSet",
    (0x8F, DEVICE): _result,
    (0x90, SERVER): _empty,
    (0x90, DEVICE): "params.RunningParams1",
    (0x91, SERVER): _empty,
    (0x91, DEVICE): "params.RunningParams2",
    (0x92, SERVER): _empty,
    (0x92, DEVICE): "params.ChargeLimits",
    (0x93, SERVER): _empty,
    (0x93, DEVICE): "params.CardParams",
    (0x95, SERVER): "params.TemporaryQrCode",
    (0x95, DEVICE): _result,
    (0x96, SERVER): "params.Locate",
    (0x96, DEVICE): _result,
    (0x97, SERVER): "params.RunningParams3",
    (0x97, DEVICE): _result,
    (0x98, SERVER): "params.MultiFunction",
    (0x98, DEVICE): _result,
    (0xE0, SERVER): "upgrade.FirmwarePacket",
    (0xE0, DEVICE): "upgrade.UpgradeReply",
    (0xE1, SERVER): "upgrade.FirmwarePacket",
    (0xE1, DEVICE): "upgrade.UpgradeReply",
    (0xE2, SERVER): "upgrade.FirmwarePacket",
    (0xE2, DEVICE): "upgrade.UpgradeReply",
    (0xE4, SERVER): _empty,
    (0xF8, SERVER): "upgrade.FirmwarePacket",
    (0xF8, DEVICE): "upgrade.UpgradeReply",
    (0xF9, SERVER): "upgrade.FirmwarePacket",
    (0xF9, DEVICE): "upgrade.UpgradeReply",
    (0xFA, SERVER): _host_upgrade,
    (0xFA, DEVICE): "upgrade.UpgradeReply",
    (0xFD, SERVER): "reserved.ReservedFd",
    (0xFD, DEVICE): "reserved.ReservedFdReply",
    (0xFE, SERVER): "reserved.ReservedFe",
}

COMMAND_NAMES: dict[int, str] = {
    0x00: "bus_poll",
    0x01: "legacy_heartbeat",
    0x02: "card_swipe",
    0x03: "settlement",
    0x04: "order_confirmation",
    0x05: "upgrade_request",
    0x06: "port_power_report",
    0x09: "test_mode",
    0x0A: "set_host_server_address",
    0x11: "host_heartbeat",
    0x12: "host_time_request",
    0x15: "host_upgrade_request",
    0x17: "host_status",
    0x18: "breaker_state_report",
    0x19: "read_host_parameters",
    0x1A: "set_host_parameters",
    0x1B: "restore_factory_parameters",
    0x1C: "remote_close",
    0x1D: "remote_open",
    0x1E: "alarm_relay_on",
    0x1F: "alarm_relay_off",
    0x20: "registration",
    0x21: "heartbeat",
    0x22: "time_request",
    0x31: "reboot_host",
    0x32: "reboot_module",
    0x33: "clear_extension_upgrade",
    0x34: "set_server_address",
    0x35: "extension_versions",
    0x3A: "set_fsk_params",
    0x3B: "fsk_params_request",
    0x41: "cabinet_heartbeat",
    0x42: "alarm",
    0x43: "charge_finished",
    0x44: "port_push",
    0x72: "cabinet_stop",
    0x81: "query_status",
    0x82: "charge_control",
    0x83: "set_running_params_1",
    0x84: "set_running_params_2",
    0x85: "set_charge_limits",
    0x86: "set_card_params",
    0x87: "reboot",
    0x88: "clear_memory",
    0x89: "play_voice",
    0x8A: "adjust_charging",
    0x8B: "read_eeprom",
    0x8C: "write_eeprom",
    0x8D: "set_work_mode",
    0x8E: "set_qr_code",
    0x8F: "set_tc_card_mode",
    0x90: "query_running_params_1",
    0x91: "query_running_params_2",
    0x92: "query_charge_limits",
    0x93: "query_card_params",
    0x94: "deleted_free_charging_query",
    0x95: "temporary_qr_code",
    0x96: "locate",
    0x97: "set_running_params_3",
    0x98: "multi_function",
    0xA1: "raise_parking_lock",
    0xA2: "lower_parking_lock",
    0xA3: "query_parking_lock",
    0xA4: "parking_lock_ultrasonic",
    0xA5: "set_parking_lock_address",
    0xA6: "query_parking_lock_address",
    0xE0: "firmware_upgrade_extension",
    0xE1: "firmware_upgrade_power_board",
    0xE2: "firmware_upgrade_host",
    0xE4: "trigger_self_upgrade",
    0xF8: "firmware_upgrade_legacy",
    0xF9: "host_firmware_upgrade_legacy",
    0xFA: "host_firmware_upgrade",
    0xFD: "reserved_fd",
    0xFE: "reserved_fe",
}


# Decoders that choose between several models by the data (documented tolerant decoding).
_DISPATCHED_SPEC: dict[tuple[int, Sender], tuple[str, ...]] = {
    (0x05, DEVICE): ("upgrade.UpgradeRequest", "upgrade.LegacyUpgradeRequest"),
    (0xFA, SERVER): ("common.Empty", "upgrade.FirmwarePacket"),
}

# Built on first access (module __getattr__ below), importing every model module.
DECODERS: dict[tuple[int, Sender], Decoder]
DISPATCHED: dict[tuple[int, Sender], tuple[type[Payload], ...]]


def _decoder(spec: str | Decoder) -> Decoder:
    return _model(spec).decode if isinstance(spec, str) else spec


def __getattr__(name: str) -> Any:
    """The full tables, for introspection (tests, fuzzing); decoding never needs them."""
    if name == "DECODERS":
        value: Any = {key: _decoder(spec) for key, spec in _SPEC.items()}
    elif name == "DISPATCHED":
        value = {key: tuple(map(_model, names)) for key, names in _DISPATCHED_SPEC.items()}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


# Per-sender tables keyed by int (Enum.__hash__ is Python code, too slow for every frame),
# filled as commands are met.
_FROM_DEVICE: dict[int, Decoder] = {}
_FROM_SERVER: dict[int, Decoder] = {}


def _resolve(command: int, sender: Sender) -> Decoder | None:
    """The decoder of a command not met before (importing its model), None without a model."""
    spec = _SPEC.get((command, sender))
    if spec is None:
        return None
    decoder = _decoder(spec)
    (_FROM_DEVICE if sender is DEVICE else _FROM_SERVER)[command] = decoder
    return decoder


def models_for(command: int, sender: Sender) -> tuple[type[Payload], ...]:
    """The payload classes a (command, sender) can decode to; empty for RawPayload commands."""
    names = _DISPATCHED_SPEC.get((command, sender))
    if names is not None:
        return tuple(map(_model, names))
    spec = _SPEC.get((command, sender))
    decoder = None if spec is None else _decoder(spec)
    owner = getattr(decoder, "__self__", None)
    return (owner,) if isinstance(owner, type) and issubclass(owner, Payload) else ()


def commands_for(model: type[Payload], sender: Sender) -> tuple[int, ...]:
    """Every code a model travels under from `sender` (TimeRequest: 0x12 and 0x22), sorted."""
    return tuple(
        sorted(
            {
                command
                for (command, who) in _SPEC
                if who is sender and model in models_for(command, who)
            }
        )
    )


_CODES = {name: command for command, name in COMMAND_NAMES.items()}


def command_code(name: str) -> int:
    """The code of a command name (`reboot` -> 0x87), for commands sent without a model;
    KeyError for a name the reference does not have."""
    return _CODES[name]


def command_name(command: int) -> str:
    """Snake-case name of a command code (`heartbeat` for 0x21), `unknown_XX` otherwise."""
    name = COMMAND_NAMES.get(command)
    return name if name is not None else f"unknown_{command:02X}"


def decode_payload(command: int, data: bytes, sender: Sender) -> Payload:
    """Typed payload of a frame's data block; RawPayload for commands without a model.

    Raises PayloadError (naming the command and the length) when the data is shorter than the
    command's mandatory prefix; never any other exception.
    """
    decoder = (_FROM_DEVICE if sender is DEVICE else _FROM_SERVER).get(command)
    if decoder is None:
        decoder = _resolve(command, sender)
        if decoder is None:
            return common.RawPayload(bytes(data))
    try:
        return decoder(data)
    except PayloadError as exc:
        raise PayloadError(
            f"command 0x{command:02X} ({command_name(command)}) from {sender.value}, "
            f"{len(data)} data bytes: {exc}"
        ) from None


def encode_payload(payload: Payload) -> bytes:
    """The data block of a payload (fields up to the last present one, then `extra`)."""
    return payload.encode()
