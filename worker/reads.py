"""Reading a job for a view: every field but the input, and the result only when it is shown.

A job's input and an out-of-line result can each be megabytes; the API never
returns the input, and returns the result inline only up to
`POSTBACK_INLINE_RESULT_BYTES` (a larger one is a `result_url`). One script
reads the small fields, the result's size and, only if it is small, the result,
so a view costs one round trip and none of the large bytes. Records written
before this module are hashes with the same fields and read the same way.
"""

from __future__ import annotations

import redis

from postback import lua

# Every field of a job's hash except `input` and `result`.
VIEW_FIELDS = (
    "id",
    "partner_id",
    "type",
    "status",
    "progress",
    "callback_url",
    "created_at",
    "priority",
    "timeout_seconds",
    "attempts",
    "base_url",
    "request_id",
    "traceparent",
    "started_at",
    "finished_at",
    "run_id",
    "lease_until",
    "error",
    "event_id",
    "cancel_requested",
)

# KEYS: the job. ARGV: the largest result read, then the fields.
# {} if there is no job, else the fields' values, the result's size, and the result if read.
_VIEW = lua.Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local values = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local size = redis.call('HSTRLEN', KEYS[1], 'result')
values[#values + 1] = size
if size > 0 and size <= tonumber(ARGV[1]) then
  values[#values + 1] = redis.call('HGET', KEYS[1], 'result')
end
return values
""",
    repeatable=True,
)


def read_view(
    client: redis.Redis | redis.client.Pipeline, job_key: str, *, inline_result_bytes: int
) -> object:
    """Call (or queue on a pipeline) the view read of the job at `job_key`; see `parse`."""
    return _VIEW.run(client, [job_key], [inline_result_bytes, *VIEW_FIELDS])


def parse(reply: list) -> dict[str, str] | None:
    """The stored fields (as text) a view read returned, with `result_bytes`; None if no job."""
    if not reply:
        return None
    count = len(VIEW_FIELDS)
    fields = {
        name: value.decode()
        for name, value in zip(VIEW_FIELDS, reply[:count], strict=True)
        if value is not None
    }
    fields["result_bytes"] = str(reply[count])
    if len(reply) > count + 1:
        fields["result"] = reply[count + 1].decode()
    return fields
