"""Which causal-LM candidate aiopt quantize ships: each candidate's measured row, the quality
floor (held over all scored positions and over those decoded through the KV cache), and the
choice: the fastest decode within the floor and faster than FP32, or the route that decodes on it
with a sooner first token (aiopt.llm.route)."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

# a route wins when its TTFT is lower than the fastest decoder's and its decode, re-timed in the same interleaved
# rounds, is within this share of that decoder's, widened by the rounds' own noise (_paired_decode_ratio). That
# decoder is usually the route's own llama.cpp model (a difference is then noise or the prefill runtime's threads
# still spinning, which the timing includes); it can be another runtime's that decodes as fast within noise
# (gpt:base: ONNX Runtime GenAI and llama.cpp Q8_0 decode within 1-2% of each other, OpenVINO prefills sooner)
ROUTE_DECODE_MARGIN = 0.03


@dataclass
class Row:
    name: str
    runtime: str
    recipe: str
    path: Path | None = None
    precision: str = "f32"
    perplexity: float | None = None
    perplexity_increase: float | None = None
    agreement: float | None = None
    decode_agreement: float | None = None  # over the positions predicted by decode steps through the KV cache
    decode_perplexity_increase: float | None = None
    cache_drift: float | None = None  # decode step vs its own prefill, largest |logit| difference
    size_bytes: int | None = None
    ttft_ms: float | None = None
    decode: list = field(default_factory=list)
    status: str = "measured"  # measured | skipped | failed
    why: str = ""
    passes_floor: bool = False
    parts: tuple = ()  # a route: (the prefill row, the decode row)

    def tokens_per_s(self) -> float | None:
        return self.decode[0]["tokens_per_s"] if self.decode else None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["path"], record["parts"] = None, [part.name for part in self.parts]
        return record


def distance_to_floor(row: Row) -> float:
    return (max(row.perplexity_increase or 0, row.decode_perplexity_increase or 0, 0)
            + max(0, 1 - min(row.agreement or 0, row.decode_agreement or 0)))


def floor_failures(row: Row, config) -> list[str]:
    """What keeps a measured row below the quality floor (empty: within it). The floor holds over
    all scored positions and again over the decoded ones alone, where a broken or lossy KV cache shows."""
    failures = []
    for where, increase, agreement in (("", row.perplexity_increase, row.agreement),
                                       (" on decode steps through the KV cache", row.decode_perplexity_increase, row.decode_agreement)):
        if not increase <= config.max_perplexity_increase:
            failures.append(f"perplexity{where} {increase * 100:+.2f}% (at most +{config.max_perplexity_increase * 100:g}%)")
        if not agreement >= config.min_agreement:
            failures.append(f"agreement{where} {agreement:.3f} (at least {config.min_agreement:g})")
    return failures


def confirm_finalists(within: list[Row], reference: Row, margin: float) -> list[Row]:
    """The candidates within the floor that quantize re-times together: those within `margin` of the
    fastest decode, FP32, and, for every route where it or its decoder is among them, both. The
    route rule compares a route with its decoder round by round (_paired_decode_ratio); timed once
    each, on a host whose bandwidth swings 2x, one of the two can fall outside the margin by luck
    (2026-12-07: the 0.5B's INT8 graph timed at 48.9 tok/s alone after its build, its route at 68.4)."""
    fastest = max(r.tokens_per_s() for r in within)
    finalists = [r for r in within if r is reference or r.tokens_per_s() >= fastest * (1 - margin)]
    if reference not in finalists:
        finalists.append(reference)
    for route in (r for r in within if r.parts):
        pair = (route, route.parts[1])
        if any(r in finalists for r in pair):
            finalists += [r for r in pair if r in within and r not in finalists]
    return finalists


def select_winner(rows: list[Row], config) -> Row | None:
    """Fastest decode (batch of the first -b) within the floor and faster than FP32; FP32 when
    some candidate is within the floor but none is faster; None when none is within it. The
    measured route replaces that choice when it reaches the first token sooner and decodes as fast
    within ROUTE_DECODE_MARGIN (_route_loses); of several that do, the fastest decoder."""
    reference = rows[0]
    for row in rows:
        if row.status != "measured":
            continue
        failures = floor_failures(row, config)
        row.passes_floor = not failures
        if failures:
            row.why = "below the quality floor: " + ", ".join(failures)
    within = [r for r in rows[1:] if r.passes_floor and not r.parts]
    if not within:
        return reference if len(rows) == 1 else None
    faster = [r for r in within if (r.tokens_per_s() or 0) > reference.tokens_per_s()]
    winner = max(faster, key=lambda r: r.tokens_per_s() or 0) if faster else reference
    displaced, route = None, None
    for candidate in sorted((r for r in rows if r.parts and r.status == "measured"), key=lambda r: -(r.tokens_per_s() or 0)):
        route_why = _route_loses(candidate, winner, reference)
        if route_why:
            candidate.why = route_why
        elif route is None:
            route = candidate
        else:
            candidate.why = f"decodes slower than {route.name} ({candidate.tokens_per_s():.1f} vs {route.tokens_per_s():.1f} tok/s)"
    if route:
        displaced, winner = winner, route
        sooner = f"which reaches the first token sooner ({route.ttft_ms:.0f} vs {displaced.ttft_ms:.0f} ms)"
        displaced.why = (f"decodes for {route.name}, {sooner}" if displaced is route.parts[1] else
                         f"decodes within {ROUTE_DECODE_MARGIN:.0%} of {route.name} ({displaced.tokens_per_s():.1f} vs "
                         f"{route.tokens_per_s():.1f} tok/s), {sooner}")
    for row in within:
        if row is not winner and row is not displaced and row not in winner.parts:
            row.why = ("not faster than FP32 here" if row not in faster
                       else f"slower than {winner.name} ({row.tokens_per_s():.1f} vs {winner.tokens_per_s():.1f} tok/s)")
    if winner is reference:
        reference.why = "chosen: no candidate within the floor decoded faster than FP32"
        return winner
    if reference is not displaced:
        reference.why = f"slower than {winner.name}"
    winner.why = "chosen: fastest decode within the quality floor" + (f", the prompt prefilled by {winner.parts[0].name}" if winner.parts else "")
    if winner.parts and winner.parts[0] is not reference:
        winner.parts[0].why = f"prefills for {winner.name} ({winner.parts[0].ttft_ms:.0f} ms to the first token on its own)"
    if winner.parts and winner.parts[1] is not displaced:
        winner.parts[1].why = f"decodes for {winner.name}"
    return winner


def _route_loses(route: Row, winner: Row, reference: Row) -> str:
    """Why a measured route does not replace the fastest decoder within the floor ("" when it does):
    it must reach the first token sooner, decode within ROUTE_DECODE_MARGIN of that decoder and,
    like every candidate, faster than FP32."""
    if not route.passes_floor:
        return route.why
    if not route.ttft_ms < winner.ttft_ms:
        return f"no sooner to the first token than {winner.name} ({route.ttft_ms:.0f} vs {winner.ttft_ms:.0f} ms)"
    alone = " alone" if winner is route.parts[1] else ""
    ratio, deviation = _paired_decode_ratio(route, winner)
    if ratio + deviation < 1 - ROUTE_DECODE_MARGIN:
        return (f"decodes slower than {winner.name}{alone} ({route.tokens_per_s():.1f} vs {winner.tokens_per_s():.1f} tok/s"
                + (f"; {ratio:.3f} +- {deviation:.3f} of it, round by round)" if deviation else ")"))
    if not route.tokens_per_s() > reference.tokens_per_s():
        return f"not faster than FP32 here ({route.tokens_per_s():.1f} vs {reference.tokens_per_s():.1f} tok/s)"
    return ""


def _paired_decode_ratio(route: Row, winner: Row) -> tuple[float, float]:
    """The route's decode over the winner's: the median of their ratios round by round where both
    were re-timed in the same interleaved rounds (aiopt.llm.quantize's confirm), and the median
    deviation of those ratios, the noise of this machine's rounds (a 0.5B decoding 32 tokens on 2
    shared cores: rounds of one GGUF spread 38-48 tok/s); else the ratio of the medians, no deviation."""
    mine, theirs = route.decode[0].get("rounds_tokens_per_s"), winner.decode[0].get("rounds_tokens_per_s")
    if not mine or not theirs or len(mine) != len(theirs):
        return route.tokens_per_s() / winner.tokens_per_s(), 0.0
    ratios = [a / b for a, b in zip(mine, theirs)]
    middle = statistics.median(ratios)
    return middle, statistics.median(abs(r - middle) for r in ratios)
