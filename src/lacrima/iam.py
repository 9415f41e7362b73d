"""Site isolation on S3: the IAM policy of one site's data manager.

A data manager of site ``it`` may put drops into ``landing/it/`` and read the validation
reports of ``it``'s quarantined drops (``quarantine/it/<batch>/report.json`` and
``report.html``), and nothing else: not another site's landing zone, not ``raw/``,
``curated/``, ``ledger/``, ``results/`` or ``reports/``. ``lacrima upload`` needs only
``s3:PutObject`` (its create-if-absent write is a conditional ``PutObject``).
"""

from __future__ import annotations

from typing import Any

from lacrima.catalog import landing_prefix, quarantine_prefix

POLICY_VERSION = "2012-10-17"


def site_policy(bucket: str, prefix: str, site: str) -> dict[str, Any]:
    """The IAM policy document for the data manager of ``site`` on ``s3://bucket/prefix``.

    Parameters
    ----------
    bucket : str
    prefix : str
        The store's prefix inside the bucket ("" for the bucket's root).
    site : str
        Site code.

    Returns
    -------
    dict
        A policy document: ``PutObject`` on ``landing/<site>/*``; ``GetObject`` on
        ``quarantine/<site>/*/report.json`` and ``report.html``; ``ListBucket`` limited to
        those two folders (so ``aws s3 ls`` works there). Everything else stays denied by
        IAM's default deny.

    Examples
    --------
    >>> p = site_policy("study-bucket", "lacrima", "it")
    >>> p["Statement"][0]["Resource"]
    ['arn:aws:s3:::study-bucket/lacrima/landing/it/*']
    """
    if not site or "/" in site or "*" in site:
        raise ValueError(f"site code {site!r}: expected a plain code such as 'it'")
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    objects = f"arn:aws:s3:::{bucket}/{root}"
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {"Sid": "UploadDropsToOwnLanding", "Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": [f"{objects}{landing_prefix(site)}/*"]},
            {"Sid": "ReadOwnQuarantineReports", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"{objects}{quarantine_prefix(site, '*')}/report.json",
                          f"{objects}{quarantine_prefix(site, '*')}/report.html"]},
            {"Sid": "ListOwnFolders", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [f"arn:aws:s3:::{bucket}"],
             "Condition": {"StringLike": {"s3:prefix": [f"{root}{landing_prefix(site)}/*",
                                                         f"{root}{quarantine_prefix(site)}/*"]}}},
        ],
    }
