"""Entry point of the packaged agent: `/usr/bin/sshklm-agent` runs `PYTHON -I -S main.py ARGS`.

Isolated mode leaves only the standard library on sys.path; the agent's dependencies are added
here: common/ (pure-Python and abi3 wheels, any CPython >= 3.11) and python3.N/ (the extension
modules built for this interpreter's minor version). Kept compatible with old Python 3 syntax so
that an unsupported interpreter reaches the explanation instead of a SyntaxError.
"""

import os
import sys

EXIT_NO_PYTHON = 5  # as /usr/lib/sshklm-agent/python.sh: systemd shows "status=5/NOTINSTALLED"


def _paths():
    here = os.path.dirname(os.path.realpath(__file__))
    version_dir = os.path.join(here, "python%d.%d" % sys.version_info[:2])
    if sys.version_info < (3, 11) or not os.path.isdir(version_dir):
        sys.stderr.write(
            "sshklm-agent: this package has no modules for Python %d.%d (%s); "
            "run /usr/bin/sshklm-agent, which picks a supported interpreter\n"
            % (sys.version_info[0], sys.version_info[1], sys.executable)
        )
        sys.exit(EXIT_NO_PYTHON)
    return [version_dir, os.path.join(here, "common")]


sys.path[:0] = _paths()

from agent.cli import main  # noqa: E402  (the path above makes it importable)

sys.exit(main())
