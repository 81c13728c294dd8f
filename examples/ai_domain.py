"""ai_domain: deterministic text analysis (port 8202).

Actions:
- `analyze` (also `analyze_content`) {"text" | "document" | "content" | "code" | "value",
  "results"?} -> {"keywords", "summary", "sentiment", "statistics", "related_knowledge",
  "memory_consulted", "source", ...}. Without a text of its own it analyses the previous
  step's output: the `results` of a `search_similar` step (`source` "results"; an empty
  search gives an empty analysis).
  Keywords are the most frequent words without stop words; the summary is the sentence
  with the most keyword weight; sentiment comes from a small lexicon. Related knowledge is
  read from the shared memory (one query per top keyword) when it is reachable, and from
  `results` when an earlier `search_similar` step passed them along. Publishes
  `ml.analysis_complete`. Nothing to compensate: it changes nothing.
"""

from __future__ import annotations

from typing import Any

from examples.text import keywords, sentiment, statistics, summary, text_of, text_of_results
from services.sdk import Context, Domain, InvalidArgument, Unavailable

MAX_RELATED = 5

domain = Domain(
    "ai_domain",
    capabilities=["ml", "analysis", "nlp"],
    version="1.0.0",
    description="Keywords, summary and sentiment of a text",
    port=8202,
)


async def _related(ctx: Context, words: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """Knowledge about the top keywords from shared memory; (found, consulted)."""
    if not ctx.memory.available:
        return [], False
    found: dict[str, dict[str, Any]] = {}
    try:
        for word in words[:3]:
            for knowledge in await ctx.memory.query(word, limit=MAX_RELATED):
                found.setdefault(
                    knowledge.id,
                    {
                        "id": knowledge.id,
                        "domain_id": knowledge.domain_id,
                        "type": knowledge.contribution_type,
                        "confidence": round(knowledge.confidence, 4),
                        "matched": word,
                    },
                )
    except Unavailable as exc:
        ctx.log.warning("shared memory unavailable, analysing without it: %s", exc)
        return [], False
    ranked = sorted(found.values(), key=lambda k: (-k["confidence"], k["id"]))
    return ranked[:MAX_RELATED], True


@domain.action(
    "analyze_content",
    description="Same as analyze (seed 001's name)",
    rerun_if_interrupted=True,
)
@domain.action(
    "analyze",
    description="Keywords, summary sentence and sentiment of a text",
    rerun_if_interrupted=True,
)
async def analyze(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    text = text_of(data)
    source = "input"
    earlier = data.get("results")
    if not text and isinstance(earlier, list):
        # No text of its own: analyse what the previous (search) step found.
        text, source = text_of_results(earlier), "results"
    if not text and source == "input":
        raise InvalidArgument(
            "input.text", "is required (or document, content, code, or a search step's results)"
        )
    top = keywords(text)
    related, consulted = await _related(ctx, [k["word"] for k in top])
    result: dict[str, Any] = {
        "source": source,
        "keywords": top,
        "summary": summary(text),
        "sentiment": sentiment(text),
        "statistics": statistics(text),
        "related_knowledge": related,
        "memory_consulted": consulted,
        "context_results": len(earlier) if isinstance(earlier, list) else 0,
    }
    if isinstance(data.get("document_id"), str):
        result["document_id"] = data["document_id"]
    await ctx.publish(
        "ml.analysis_complete",
        {
            "document_id": result.get("document_id", ""),
            "sentiment": result["sentiment"]["label"],
            "keywords": [k["word"] for k in top],
        },
    )
    return result


if __name__ == "__main__":
    raise SystemExit(domain.run())
