"""One module per CLI sub-command.

Each module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`.
"""
