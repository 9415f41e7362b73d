"""Told without asking: a site's contact hears of a quarantined drop, the operator of a failed run.

Messages go through Prefect notification blocks: ``CustomWebhookNotificationBlock`` (a JSON
POST with ``subject`` and ``text``) and an Apprise ``mailto://`` block for e-mail through the
project's SMTP server. Blocks are built in memory from the site's ``[site.contact]`` and the
environment; nothing is saved on the Prefect server, so no secret is stored there.

Environment
-----------
``LACRIMA_SMTP``            SMTP server ``host:port`` (e-mail is sent only when set)
``LACRIMA_SMTP_FROM``       sender address (default ``lacrima@<host>``, or ``lacrima@localhost``)
``LACRIMA_SMTP_MODE``       ``starttls`` (default), ``ssl`` or ``insecure`` (a local relay)
``LACRIMA_SMTP_USER`` / ``LACRIMA_SMTP_PASSWORD``  login, when the server needs one
``LACRIMA_OPERATOR_WEBHOOK`` / ``LACRIMA_OPERATOR_EMAIL``  who hears of a failed run
``LACRIMA_PUBLIC_URL``      the site portal's address (``lacrima portal serve --public-url``):
                            a quarantine notice links to the batch's page there, not to a
                            path on the server

A notification that cannot be delivered is logged and never fails the run.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import quote, urlencode

from prefect.blocks.notifications import AppriseNotificationBlock, CustomWebhookNotificationBlock
from pydantic import SecretStr

from lacrima.dropreport import failure_notice, quarantine_notice, site_contact

log = logging.getLogger("lacrima.notify")


class EmailNotification(AppriseNotificationBlock):
    """E-mail through an SMTP server, as an Apprise ``mailto://`` URL."""

    _block_type_name = "Lacrima e-mail"


def smtp_url(to: list[str]) -> str | None:
    """The Apprise URL that mails ``to`` through ``LACRIMA_SMTP``; None when no server is set."""
    server = os.environ.get("LACRIMA_SMTP", "").strip()
    if not server or not to:
        return None
    host = server.split(":")[0]
    # A sender at an IP address is refused by Apprise; a bare host name gives a valid one.
    default_from = f"lacrima@{host}" if re.search(r"[a-z]\.[a-z]", host, re.I) else "lacrima@localhost"
    user, password = os.environ.get("LACRIMA_SMTP_USER", ""), os.environ.get("LACRIMA_SMTP_PASSWORD", "")
    login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    query = {"from": os.environ.get("LACRIMA_SMTP_FROM", default_from), "to": ",".join(to),
             "mode": os.environ.get("LACRIMA_SMTP_MODE", "starttls")}
    return f"mailto://{login}{server}?{urlencode(query)}"


def blocks_for(contact: dict) -> list:
    """The notification blocks for a contact (``webhook`` and/or ``email``)."""
    blocks = []
    if contact.get("webhook"):
        blocks.append(CustomWebhookNotificationBlock(
            name="lacrima", url=contact["webhook"],
            json_data={"subject": "{{subject}}", "text": "{{body}}"}))
    url = smtp_url(list(contact.get("email", ())))
    if url:
        blocks.append(EmailNotification(url=SecretStr(url)))
    elif contact.get("email"):
        log.warning("site contact names e-mail but LACRIMA_SMTP is not set: no e-mail sent")
    return blocks


def send(contact: dict, subject: str, body: str) -> int:
    """Send one message to a contact through each of its blocks; returns how many went out."""
    sent = 0
    for block in blocks_for(contact):
        try:
            with block.raise_on_failure():     # else Apprise only logs a message not sent
                block.notify(body, subject)
            sent += 1
        except Exception as err:        # noqa: BLE001 - a lost notice must not fail the run
            log.warning("notification through %s failed: %s", type(block).__name__, err)
    return sent


def portal_link(site: str, batch: str, public_url: str | None = None) -> str | None:
    """The batch's page in the site portal at ``public_url`` (else ``LACRIMA_PUBLIC_URL``);
    None when no portal address is set."""
    url = (public_url if public_url is not None else os.environ.get("LACRIMA_PUBLIC_URL", ""))
    if not url.strip():
        return None
    return f"{url.strip().rstrip('/')}/sites/{quote(site)}/batches/{quote(batch[:12])}"


def notify_quarantines(drops: list[dict], sites) -> int:
    """Tell each site's contact about its quarantined drops of this run; returns messages sent.

    With a portal address (``LACRIMA_PUBLIC_URL``) the message links to the batch's page in
    the portal, which the site can open, instead of the report's path in the store."""
    by_code = {s.code: s for s in sites}
    sent = 0
    for drop in drops:
        site = by_code.get(drop["site"])
        if drop["outcome"] != "quarantined" or site is None:
            continue
        contact = site_contact(site)
        link = portal_link(drop["site"], drop["batch"])
        if contact:
            sent += send(contact, *quarantine_notice({**drop, "report": link} if link else drop,
                                                     site.language))
    return sent


def operator_contact() -> dict:
    """Who hears of a failed run: ``LACRIMA_OPERATOR_WEBHOOK`` / ``LACRIMA_OPERATOR_EMAIL``."""
    email = [a.strip() for a in os.environ.get("LACRIMA_OPERATOR_EMAIL", "").split(",") if a.strip()]
    return {k: v for k, v in (("webhook", os.environ.get("LACRIMA_OPERATOR_WEBHOOK", "")),
                              ("email", email)) if v}


def notify_run_failure(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook of the pipeline flow."""
    contact = operator_contact()
    if contact:
        error = state.message or type(state).__name__
        send(contact, *failure_notice(getattr(flow_run, "name", "?"), error,
                                      os.environ.get("LACRIMA_RUN_LOG", "")))
