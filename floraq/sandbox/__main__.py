"""``python -m floraq.sandbox``: the same as ``floraq sandbox``."""

from floraq.sandbox.cli import sandbox_command

sandbox_command(prog_name="floraq sandbox")
