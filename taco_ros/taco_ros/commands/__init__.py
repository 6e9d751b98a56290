"""Sub-commands of the ``taco-ros`` command line, one module each.

Each module defines ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code.
"""

# Modules are imported lazily by taco_ros.cli so that `taco-ros info` does not pay for torch imports
# of unrelated commands.
COMMANDS = ('info', 'models', 'anchors', 'bag', 'eval', 'demo')
