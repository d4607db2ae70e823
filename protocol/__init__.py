"""Sans-I/O codec for the DNY (AP3000) charger protocol: bytes in, typed items out.

    decoder = StreamDecoder()
    for item in decoder.feed(received):
        if isinstance(item, Frame):
            payload = decode_payload(item.command, item.data, Sender.DEVICE)
            if isinstance(payload, Heartbeat):
                reply = encode_frame(
                    item.physical_id, item.message_id, 0x21, encode_payload(ResultReply(0))
                )

Fields keep wire values; SI values are `*_v`, `*_w`, `*_kwh`, `*_a`, `*_c`, `*_s` properties
(see `protocol.units`). Everything raised on bad input is a `DnyError`. See docs/protocol.md.
"""

import importlib
from typing import TYPE_CHECKING, Any

from protocol.commands._model import Payload, Sender
from protocol.commands.common import Empty, RawPayload, ResultReply
from protocol.commands.registry import (
    command_code,
    command_name,
    commands_for,
    decode_payload,
    encode_payload,
)
from protocol.errors import (
    ChecksumError,
    DnyError,
    FrameError,
    LengthError,
    PayloadError,
    TruncatedError,
)
from protocol.frame import (
    BadFrame,
    Frame,
    Garbage,
    Iccid,
    Keepalive,
    StreamDecoder,
    StreamItem,
    decode_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from protocol.commands.cabinet import (
        Alarm,
        CabinetHeartbeat,
        CabinetStop,
        CabinetStopReply,
        PortPush,
    )
    from protocol.commands.card import CardSwipe, CardSwipeReply
    from protocol.commands.charging import (
        AdjustCharging,
        ChargeControl,
        ChargeControlReply,
        ChargeFinished,
        OrderConfirmation,
        OrderConfirmationReply,
        PortPowerReport,
        SessionEnd,
        Settlement,
    )
    from protocol.commands.heartbeats import (
        Heartbeat,
        LegacyHeartbeat,
        Registration,
        TimeReply,
        TimeRequest,
    )
    from protocol.commands.host import (
        BusPoll,
        ExtensionVersion,
        ExtensionVersions,
        FskParams,
        FskParamsRequest,
        HostHeartbeat,
        HostStatus,
        ServerAddress,
        TestModeReport,
    )
    from protocol.commands.params import (
        CardModeSet,
        CardParams,
        ChargeLimits,
        EepromRead,
        EepromReadReply,
        EepromWrite,
        Locate,
        MultiFunction,
        PlayVoice,
        QrCodeSetup,
        RunningParams1,
        RunningParams2,
        RunningParams3,
        TemporaryQrCode,
        WorkModeSet,
    )
    from protocol.commands.reserved import ReservedFd, ReservedFdReply, ReservedFe
    from protocol.commands.upgrade import (
        FirmwarePacket,
        LegacyUpgradeRequest,
        UpgradeReply,
        UpgradeRequest,
    )

# Model classes -> their module, imported on first access: most of the codec's import time
# is building the model classes, and `chargebridge decode` meets only a few modules.
_LAZY = {
    "AdjustCharging": "charging",
    "Alarm": "cabinet",
    "BusPoll": "host",
    "CabinetHeartbeat": "cabinet",
    "CabinetStop": "cabinet",
    "CabinetStopReply": "cabinet",
    "CardModeSet": "params",
    "CardParams": "params",
    "CardSwipe": "card",
    "CardSwipeReply": "card",
    "ChargeControl": "charging",
    "ChargeControlReply": "charging",
    "ChargeFinished": "charging",
    "ChargeLimits": "params",
    "EepromRead": "params",
    "EepromReadReply": "params",
    "EepromWrite": "params",
    "ExtensionVersion": "host",
    "ExtensionVersions": "host",
    "FirmwarePacket": "upgrade",
    "FskParams": "host",
    "FskParamsRequest": "host",
    "Heartbeat": "heartbeats",
    "HostHeartbeat": "host",
    "HostStatus": "host",
    "LegacyHeartbeat": "heartbeats",
    "LegacyUpgradeRequest": "upgrade",
    "Locate": "params",
    "MultiFunction": "params",
    "OrderConfirmation": "charging",
    "OrderConfirmationReply": "charging",
    "PlayVoice": "params",
    "PortPowerReport": "charging",
    "PortPush": "cabinet",
    "QrCodeSetup": "params",
    "Registration": "heartbeats",
    "ReservedFd": "reserved",
    "ReservedFdReply": "reserved",
    "ReservedFe": "reserved",
    "RunningParams1": "params",
    "RunningParams2": "params",
    "RunningParams3": "params",
    "ServerAddress": "host",
    "SessionEnd": "charging",
    "Settlement": "charging",
    "TemporaryQrCode": "params",
    "TestModeReport": "host",
    "TimeReply": "heartbeats",
    "TimeRequest": "heartbeats",
    "UpgradeReply": "upgrade",
    "UpgradeRequest": "upgrade",
    "WorkModeSet": "params",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"protocol.commands.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AdjustCharging",
    "Alarm",
    "BadFrame",
    "BusPoll",
    "CabinetHeartbeat",
    "CabinetStop",
    "CabinetStopReply",
    "CardModeSet",
    "CardParams",
    "CardSwipe",
    "CardSwipeReply",
    "ChargeControl",
    "ChargeControlReply",
    "ChargeFinished",
    "ChargeLimits",
    "ChecksumError",
    "DnyError",
    "EepromRead",
    "EepromReadReply",
    "EepromWrite",
    "Empty",
    "ExtensionVersion",
    "ExtensionVersions",
    "FirmwarePacket",
    "Frame",
    "FrameError",
    "FskParams",
    "FskParamsRequest",
    "Garbage",
    "Heartbeat",
    "HostHeartbeat",
    "HostStatus",
    "Iccid",
    "Keepalive",
    "LegacyHeartbeat",
    "LegacyUpgradeRequest",
    "LengthError",
    "Locate",
    "MultiFunction",
    "OrderConfirmation",
    "OrderConfirmationReply",
    "Payload",
    "PayloadError",
    "PlayVoice",
    "PortPowerReport",
    "PortPush",
    "QrCodeSetup",
    "RawPayload",
    "Registration",
    "ReservedFd",
    "ReservedFdReply",
    "ReservedFe",
    "ResultReply",
    "RunningParams1",
    "RunningParams2",
    "RunningParams3",
    "Sender",
    "ServerAddress",
    "SessionEnd",
    "Settlement",
    "StreamDecoder",
    "StreamItem",
    "TemporaryQrCode",
    "TestModeReport",
    "TimeReply",
    "TimeRequest",
    "TruncatedError",
    "UpgradeReply",
    "UpgradeRequest",
    "WorkModeSet",
    "command_code",
    "command_name",
    "commands_for",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_payload",
]
