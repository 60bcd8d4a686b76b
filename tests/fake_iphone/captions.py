"""What the Core ML stand-in decodes, as a per-test scenario (the fake cannot run a model).

`tokens[image_id]`: the greedy token ids (without bos, eos included) the model produces for that image on every
compute unit — a test typically sets what the host's PyTorch reference decoded, i.e. "Core ML computes what the host
computes". `changed[compute_unit][image_id]`: other ids on that unit only (fp16 on the Neural Engine turning a caption
into another). Images the scenario does not name get the fake's seeded stand-in tokens. The host never sees the
scenario: it only receives the tokens the runner writes into result.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CaptionScenario:
    tokens: dict[str, list[int]]
    changed: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def tokens_for(self, image_id: str, compute_unit: str) -> list[int] | None:
        """The ids decoded for an image on a unit; job image ids may carry an "@<size>" suffix (bench/run/targets)."""
        plain = image_id.split("@", 1)[0]
        unit_changes = self.changed.get(compute_unit) or {}
        if plain in unit_changes:
            return list(unit_changes[plain])
        found = self.tokens.get(plain)
        return None if found is None else list(found)
