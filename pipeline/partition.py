"""Greedy balanced partition: heaviest item first, always to the lightest bin (LPT scheduling).

Used to split videos between torchrun ranks by frame count and source videos between folds.
"""

from collections.abc import Callable, Hashable


def balance(items: list[Hashable], weight: Callable[[Hashable], int], bins: int) -> list[list]:
    """Split ``items`` into ``bins`` lists of about equal total weight; ties broken by the item
    itself, so the result is deterministic. Each list keeps the order items were assigned in."""
    loads = [0] * bins
    parts: list[list] = [[] for _ in range(bins)]
    for item in sorted(items, key=lambda i: (-weight(i), i)):
        k = loads.index(min(loads))
        parts[k].append(item)
        loads[k] += weight(item)
    return parts
