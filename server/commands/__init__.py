"""``trailguard`` sub-commands, one module per area.

Each module has ``register(subparsers)``; every parser it adds sets ``func(settings, args) -> int``.
"""

COMMAND_MODULES = [
    "server.commands.db",
    "server.commands.serve",
    "server.commands.site",
    "server.commands.sessions",
    "server.commands.worker",
    "server.commands.analyst",
    "server.commands.alerts",
    "server.commands.pump",
    "server.commands.whale",
    "server.commands.mouse",
    "server.commands.render",
]
