"""The API's per-partner rate limit, as a Lua function two scripts share.

The API finds the partner of an API key and counts the request against the
partner's limit in one script (`app.throttle`). A submission from a key the API
process already knows does both inside the script that creates the job
(`worker.quotas`), so that accepting a job is one round trip, not two: the key
is looked up again there, so a revoked key stops working at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from postback.errors import LimitExceeded, Unauthorized

# A sliding window approximated from two fixed windows (the current one and the
# previous one, weighted by how much of it still overlaps). `count_request` counts one
# request of a partner; `authenticate_and_count` first finds the partner of an API key.
# Both return {partner id or false, allowed 0/1, remaining, seconds to reset} and count
# only what they allow.
AUTHENTICATE_AND_COUNT = """
local function count_request(partner, prefix, limit, window, now)
  local index = math.floor(now / window)
  local current_key = prefix .. partner .. ':' .. index
  local current = tonumber(redis.call('GET', current_key) or '0')
  local previous = tonumber(redis.call('GET', prefix .. partner .. ':' .. (index - 1)) or '0')
  local overlap = 1 - (now - index * window) / window
  local used = previous * overlap + current
  local reset = tostring((index + 1) * window - now)
  if used + 1 > limit then return {partner, 0, 0, reset} end
  if redis.call('INCR', current_key) == 1 then
    redis.call('EXPIRE', current_key, math.ceil(window * 2) + 1)
  end
  return {partner, 1, math.floor(limit - used - 1), reset}
end
local function authenticate_and_count(index_key, prefix, limit, window, now)
  local partner = redis.call('GET', index_key)
  if not partner then return {false, 0, 0, '0'} end
  return count_request(partner, prefix, limit, window, now)
end
"""


@dataclass(kw_only=True)
class RateCheck:
    """One request's count, to be made by the script that writes for it.

    `partner_id` is who the API process believes owns the key at `index_key`;
    the script refuses (`KeyChanged`) if the key no longer leads there. After a
    successful write, `remaining` and `reset` hold the count's answer.
    """

    index_key: str
    partner_id: str
    prefix: str
    limit: int
    window_seconds: float
    now: float
    remaining: int = 0
    reset: str = "0"

    def args(self) -> list[object]:
        return [self.prefix, self.limit, self.window_seconds, repr(self.now), self.partner_id]


class KeyChanged(Unauthorized):
    """The API key no longer leads to the partner the check named: nothing was written."""

    def __init__(self, detail: str = "the API key is not valid", /) -> None:
        super().__init__(detail)


class RateLimited(LimitExceeded):
    """The partner is over its rate limit: nothing was written (and nothing counted).

    `reset` is the seconds until the window lets a request through, as the script
    gave them ("0.25"); `retry_after_seconds` is that, rounded up to at least 1.
    `limit` is the requests allowed per window, when the raiser knows it.
    """

    def __init__(
        self, reset: str, *, limit: int | None = None, detail: str = "over the rate limit"
    ) -> None:
        retry_after_seconds = max(1, math.ceil(float(reset)))
        super().__init__(detail, limit=limit, retry_after_seconds=retry_after_seconds)
        self.reset = reset
