"""The floor `chargebridge decode` is measured against (bench/decode.py runs both).

Reads lines of hex from stdin; per frame: unhex, check the checksum, unpack the header and
write the header keys the decode CLI prints (all but `command_name` and `payload`) as one JSON
line. Standard library only, so its start-up is the interpreter's and nothing more.
"""

import json
import struct
import sys

HEAD = struct.Struct("<3sHIHB")


def main() -> None:
    write = sys.stdout.write
    dumps = json.dumps
    for line in sys.stdin:
        raw = bytes.fromhex(line)
        ok = sum(raw[:-2]) & 0xFFFF == raw[-2] | raw[-1] << 8
        _, length, pid, mid, command = HEAD.unpack_from(raw)
        obj = {
            "command": command,
            "physical_id": pid,
            "device_id": f"{pid:08X}",
            "message_id": mid,
            "direction": "device_to_server",
            "length": length,
            "checksum_ok": ok,
        }
        write(dumps(obj) + "\n")


if __name__ == "__main__":
    main()
