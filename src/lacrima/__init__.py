"""lacrima: data platform of the three-site replication study on crying in psychotherapy.

Every function here runs without Prefect; ``flows/`` wires them into flows.
"""

__version__ = "0.1.0"

import logging as _logging

# A library's logger: the application decides where records go (the run's log file, Prefect's
# logs). Without a handler of its own Python would print warnings on stderr of every command,
# e.g. a file `lacrima status` already lists under "wrong place".
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
