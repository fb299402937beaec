"""How a job's failure is classified, once, where it happens (e.g. at a provider's edge).

JobError                 a failure of one attempt; carries what the retry policy needs
 +-- TransientError      may succeed later: timeout, connection error, 5xx, 429 (retry_after)
 |    +-- NotCalled      this item of a batch was not sent at all: the remote asked us to wait first
 +-- PermanentError      will fail again: invalid recipient, other 4xx, invalid payload
ConfigurationError       deliberately outside the tree: bad credentials or settings are
                         an operator's problem, never swallowed as an ordinary failure
"""


class JobError(Exception):
    """One attempt failed; `status` is the remote status code when there was one."""

    def __init__(self, message: str, *, status: int | None = None, response_text: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.response_text = response_text[:2000]

    def __str__(self) -> str:
        return f"{self.message} (status {self.status})" if self.status else self.message


class TransientError(JobError):
    """Retrying later may succeed.

    `retry_after` is the earliest moment (seconds from now) the remote allows another
    call; `unknown_outcome` means the request may have been accepted (timeout after
    sending) and must be retried with the same idempotency key, never a new one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        response_text: str = "",
        retry_after: float | None = None,
        unknown_outcome: bool = False,
    ) -> None:
        super().__init__(message, status=status, response_text=response_text)
        self.retry_after = retry_after
        self.unknown_outcome = unknown_outcome


class NotCalled(TransientError):
    """An item of a batch that was never sent: an earlier item's answer (a 429, refused credentials) said the
    remote would refuse it too.  No attempt is used; `retry_after` is the pace the remote asked for."""


class PermanentError(JobError):
    """Retrying cannot help: the input itself is refused.

    `recipient_refused` means the address itself is bad (invalid, hard-bounced): callers
    stop sending to it, not just this message.
    """

    def __init__(
        self, message: str, *, status: int | None = None, response_text: str = "", recipient_refused: bool = False
    ) -> None:
        super().__init__(message, status=status, response_text=response_text)
        self.recipient_refused = recipient_refused


class ConfigurationError(Exception):
    """Credentials or settings are wrong; an operator must fix them."""
