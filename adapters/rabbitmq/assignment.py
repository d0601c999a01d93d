"""Which member of a partitioned group consumes which partition queue.

Every member computes the same answer from the same set of live member ids, so no
coordinator is needed: `assign(members, n)` is deterministic, balanced (each member gets
`n // m` or `n // m + 1` partitions) and sticky (rendezvous hashing: when a member joins
or leaves, mostly the partitions it gains or loses move, the others stay where they are).

Members that briefly disagree (one has heard of a newcomer, another not yet) may both
claim a queue; single-active-consumer on every partition queue keeps that safe: the
broker lets only one of them consume it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def assign(members: Iterable[str], partitions: int) -> dict[str, frozenset[int]]:
    """-> member id -> the partitions it owns (every live member has an entry)."""
    ids = sorted(set(members))
    if not ids:
        return {}
    base, extra = divmod(partitions, len(ids))
    owned: dict[str, set[int]] = {member: set() for member in ids}
    owner: dict[int, str] = {}
    preferences = sorted(
        ((_score(member, p), p, member) for p in range(partitions) for member in ids),
        reverse=True,
    )
    for _, partition, member in preferences:
        if partition in owner:
            continue
        count = len(owned[member])
        if count < base or (count == base and extra > 0):
            if count == base:
                extra -= 1
            owner[partition] = member
            owned[member].add(partition)
    return {member: frozenset(parts) for member, parts in owned.items()}


def _score(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{partition}/{member}".encode(), digest_size=8).digest()
