"""The app layer over the ``lacrima`` library: Prefect flows, tasks and deployments, and the
``lacrima`` command line (``flows/cli.py``). The logic lives in ``lacrima``."""
