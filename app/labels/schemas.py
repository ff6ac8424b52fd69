"""API shapes for human corrections of the UX/CX label."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.nlp.base import UxCxLabel


class LabelUpdate(BaseModel):
    """A person's label for a ticket. It wins over the model everywhere and is kept when the
    ticket is re-analysed or the model retrained."""

    model_config = ConfigDict(extra="forbid")

    label: UxCxLabel = Field(description="UX, CX or none")
    subcategory: str | None = Field(
        default=None, description="one of the label's sub-categories (see GET /v1/labels)"
    )
    author: str = Field(description="who made the correction (name or e-mail)", max_length=255)
    note: str | None = Field(default=None, description="why, for the next reader")


LabelUpdateAdapter: TypeAdapter[LabelUpdate] = TypeAdapter(LabelUpdate)


class LabelsCatalog(BaseModel):
    """The labels, their sub-categories, and the team each routes to now."""

    labels: dict[str, list[str]]
    teams: dict[str, dict[str, str | None]]
    default_team: str | None
