"""What handlers raise to steer their job, and what the worker raises inside them.

Exceptions::

    RetryableError     raise it: the job is retried with backoff (up to POSTBACK_JOB_MAX_ATTEMPTS)
    JobCancelled       raised in the handler when its job is cancelled (do not catch it)
    JobTimedOut        raised in the handler when its time is up (do not catch it)

They steer a job and are no errors of Postback's, so they stay outside the
`postback.errors` tree: an `except PostbackError` never catches one, and the last
two are BaseExceptions, so neither does a handler's `except Exception`.
"""

from __future__ import annotations


class RetryableError(Exception):
    """A temporary failure: run the job again later."""


class JobCancelled(BaseException):
    """The job was cancelled; a BaseException, so `except Exception` does not swallow it."""


class JobTimedOut(BaseException):
    """The job ran past its timeout; a BaseException, so `except Exception` does not swallow it."""
