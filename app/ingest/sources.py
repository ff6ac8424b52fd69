"""The source names the service accepts, and the channel each implies."""

from __future__ import annotations

from app.tickets.models import Channel

HELPDESK_SOURCES = (
    "api", "email", "chat", "phone", "web_form", "generic",
    "zendesk", "freshdesk", "intercom", "helpscout", "front",
    "salesforce", "hubspot", "gorgias", "kustomer", "jira_service_management",
)  # fmt: skip
SOCIAL_SOURCES = (
    "twitter", "x", "reddit", "app_store", "google_play", "trustpilot", "facebook",
    "instagram", "youtube", "tiktok", "linkedin", "mastodon", "bluesky", "forum",
    "discord", "g2", "capterra",
)  # fmt: skip


class SourceRegistry:
    """Known sources plus those named in the EXTRA_SOURCES setting."""

    def __init__(self, extra: str = "") -> None:
        self.default_channel: dict[str, Channel] = dict.fromkeys(HELPDESK_SOURCES, Channel.ticket)
        self.default_channel.update(dict.fromkeys(SOCIAL_SOURCES, Channel.social))
        for item in (p.strip().lower() for p in extra.split(",")):
            if not item:
                continue
            name, _, channel = item.partition(":")
            self.default_channel[name] = Channel(channel) if channel else Channel.ticket

    def channel_for(self, source: str) -> Channel | None:
        """The default channel of a known source; None when the source is unknown."""
        return self.default_channel.get(source)

    @property
    def names(self) -> list[str]:
        """All accepted source names, sorted."""
        return sorted(self.default_channel)
