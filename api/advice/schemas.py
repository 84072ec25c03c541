"""Response shapes of /v1/recommendations and /v1/estimates: the advisor's own typed answers
(`advisor.answers`), so the OpenAPI schema documents exactly what the advisor returns."""

from __future__ import annotations

from advisor.answers import EstimateAnswer, Recommendation

__all__ = ["EstimateAnswer", "Recommendation"]
