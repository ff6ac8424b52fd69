"""The routing table: UX/CX label and sub-category in, owning team out."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from app.nlp.base import SUBCATEGORIES, UXCX_LABELS


@dataclass(frozen=True, slots=True)
class Route:
    """One rule: a label, optionally a sub-category, and the team that owns it."""

    label: str
    subcategory: str | None
    team: str | None


class RoutingTable:
    """Ordered rules; the first match wins, otherwise the default team."""

    def __init__(self, routes: list[Route], default_team: str | None) -> None:
        self.routes = routes
        self.default_team = default_team

    @classmethod
    def load(cls, path: Path) -> RoutingTable:
        """Read and check a TOML routing table; a bad file fails loudly at start-up."""
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"ROUTING_TABLE {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"ROUTING_TABLE {path} is not valid TOML: {exc}") from exc
        routes = []
        for i, item in enumerate(raw.get("route", [])):
            label = item.get("label")
            if label not in UXCX_LABELS:
                raise ValueError(
                    f"ROUTING_TABLE {path}: route {i + 1} has label {label!r}; "
                    f"use one of {', '.join(UXCX_LABELS)}"
                )
            subcategory = item.get("subcategory")
            if subcategory is not None and subcategory not in SUBCATEGORIES[label]:
                raise ValueError(
                    f"ROUTING_TABLE {path}: route {i + 1} has subcategory {subcategory!r}; "
                    f"{label}'s are {', '.join(SUBCATEGORIES[label])}"
                )
            team = item.get("team")
            if not isinstance(team, str):
                raise ValueError(f"ROUTING_TABLE {path}: route {i + 1} needs a team (string)")
            unknown = set(item) - {"label", "subcategory", "team"}
            if unknown:
                raise ValueError(
                    f"ROUTING_TABLE {path}: route {i + 1} has unknown keys {sorted(unknown)}; "
                    "use label, subcategory and team"
                )
            routes.append(Route(label=label, subcategory=subcategory, team=team or None))
        default = raw.get("default_team")
        if default is not None and not isinstance(default, str):
            raise ValueError(f"ROUTING_TABLE {path}: default_team must be a string")
        return cls(routes, default_team=default or None)

    @property
    def teams(self) -> list[str]:
        """Every team a route or the default names, sorted."""
        names = {r.team for r in self.routes if r.team}
        if self.default_team:
            names.add(self.default_team)
        return sorted(names)

    def team_for(self, label: str | None, subcategory: str | None = None) -> str | None:
        """The team for a label and sub-category; None when there is nothing to route."""
        if label is None:
            return self.default_team
        for route in self.routes:
            if route.label == label and route.subcategory in (None, subcategory):
                return route.team
        return self.default_team
