"""Where `callbacks` keeps its state in Redis: every key under one prefix it is given.

No other package writes these keys; the stores of this package each own theirs
(the outbox its messages, deliveries and schedule, the breaker its circuits,
the rate limiter its counters) and talk to each other through their methods.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "pb:cb:"


@dataclass(frozen=True)
class Keys:
    """The key layout under `prefix`."""

    prefix: str = DEFAULT_PREFIX

    def message(self, message_id: str) -> str:
        return f"{self.prefix}msg:{message_id}"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}dlv:{delivery_id}"

    def attempts(self, delivery_id: str) -> str:
        return f"{self.prefix}dlv:{delivery_id}:attempts"

    @property
    def owners_due(self) -> str:
        """Owner → a lower bound of the earliest due time of its deliveries."""
        return f"{self.prefix}due"

    def due(self, owner: str) -> str:
        """One owner's deliveries → when each is due (a claimed one: when its claim lapses)."""
        return f"{self.prefix}due:{owner}"

    def parked(self, group: str) -> str:
        """Deliveries parked until `group` (a circuit) lets them go."""
        return f"{self.prefix}parked:{group}"

    def released(self, group: str) -> str:
        """The last generation of `group` whose parked deliveries were let go."""
        return f"{self.prefix}released:{group}"

    def dead_link(self, dead_letter_id: str) -> str:
        return f"{self.prefix}dead:{dead_letter_id}"

    def dead_indexes(self, owner: str, dest: str) -> list[str]:
        """The four lists a dead letter is on: all, by owner, by destination, by both."""
        base = self.prefix + "deadlist"
        return [
            base,
            f"{base}:owner:{owner}",
            f"{base}:dest:{dest}",
            f"{base}:owner:{owner}:dest:{dest}",
        ]

    def secrets(self, owner: str) -> str:
        return f"{self.prefix}secrets:{owner}"

    def circuit(self, circuit_id: str) -> str:
        return f"{self.prefix}circuit:{circuit_id}"

    @property
    def circuits(self) -> str:
        """Every circuit with state, by id (lexicographic, for paging)."""
        return f"{self.prefix}circuits"

    @property
    def circuits_expiry(self) -> str:
        """Circuit id → when its state expires (to prune the index)."""
        return f"{self.prefix}circuits:expiry"

    @property
    def circuits_open(self) -> str:
        """Circuits open or half-open (its size is the open-circuit gauge)."""
        return f"{self.prefix}circuits:open"

    def rate(self, dest: str) -> str:
        return f"{self.prefix}rate:{dest}"


DEFAULT_KEYS = Keys()
