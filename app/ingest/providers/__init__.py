"""Helpdesk webhooks: one module per provider, each verifying its signature and turning its
payload into tickets. `PROVIDERS` maps the URL name to the module's `Provider`."""

from __future__ import annotations

from app.ingest.providers import freshdesk, front, generic, helpscout, intercom, zendesk
from app.ingest.providers.base import Normalised, Provider, WebhookRequest

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        zendesk.PROVIDER,
        freshdesk.PROVIDER,
        intercom.PROVIDER,
        helpscout.PROVIDER,
        front.PROVIDER,
        generic.PROVIDER,
    )
}

__all__ = ["PROVIDERS", "Normalised", "Provider", "WebhookRequest"]
