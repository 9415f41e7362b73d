"""lacrima: data platform of the three-site replication study on crying in psychotherapy.

Every function here runs without Prefect; ``flows/`` wires them into flows.
"""

__version__ = "0.1.0"
