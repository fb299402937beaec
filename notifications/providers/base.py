"""The one interface every provider implements, and the classification of failures at the provider edge.

A send is always: build the vendor payload -> call the vendor -> parse its answer.
Subclasses fill those hooks; every failure leaves a provider as exactly one of
jobs.errors.TransientError, PermanentError or ConfigurationError.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import requests
import requests.adapters

from jobs.errors import JobError, NotCalled, TransientError
from jobs.http import classify_http_status, classify_request_exception, environment_once
from notifications.rendering import RenderedMessage


@dataclass(frozen=True)
class OutboundMessage:
    """Everything a provider needs to send one notification, already rendered."""

    notification_id: str
    idempotency_key: str
    channel: str
    to: str
    content: RenderedMessage
    #: Extra e-mail headers (e.g. List-Unsubscribe); ignored by other channels.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    message_id: str


class BaseProvider:
    """One vendor account. Instances live for a worker process and reuse their connections."""

    #: The channel this provider's vendor delivers on.
    channel: ClassVar[str]
    #: The vendor, as the sandbox and logs name it.
    vendor: ClassVar[str]
    #: Most messages `send_batch` takes per call (vendors with a batch endpoint raise it).
    max_batch: ClassVar[int] = 50
    #: The vendor can say whether it already accepted a message (`look_up`): a message whose
    #: earlier outcome is unknown is looked up there before it is sent again.
    can_look_up: ClassVar[bool] = False

    def __init__(self, *, name: str, timeout: float, **options: Any) -> None:
        self.name = name
        self.timeout = timeout
        self.options = options

    def send(self, message: OutboundMessage) -> SendResult:
        raise NotImplementedError

    def send_batch(self, messages: list[OutboundMessage]) -> list[SendResult | JobError]:
        """Send several messages; one result or classified error per message, in order.

        One request per message (vendors without a batch endpoint).  After a 429 the rest are not sent
        (NotCalled): the vendor asked for no more calls for a while.
        """
        results: list[SendResult | JobError] = []
        for index, message in enumerate(messages):
            try:
                results.append(self.send(message))
                continue
            except JobError as exc:
                results.append(exc)
                if not (isinstance(exc, TransientError) and exc.status == 429):
                    continue
                return results + [self.not_called(exc.retry_after)] * (len(messages) - index - 1)
        return results

    def not_called(self, retry_after: float | None) -> NotCalled:
        """What a message of a batch gets when it was not sent because the vendor answered 429 to another."""
        return NotCalled(f"{self.name}: not called, it asked us to wait", retry_after=retry_after)

    def look_up(self, message: OutboundMessage, *, since: datetime) -> SendResult | None:
        """The vendor's record of `message` if it accepted it (sent no earlier than `since`), else None.

        Only for vendors with `can_look_up`; failures are classified like a send's.
        """
        raise NotImplementedError(f"{self.vendor} offers no lookup")

    def close(self) -> None:
        """Release connections (called when a worker shuts down)."""


class HttpProvider(BaseProvider):
    """A provider that speaks JSON or form HTTP through one keep-alive session.

    Its vendors take one message per request, so a batch goes out `concurrency` requests at a time on
    kept-alive connections: a call's worth of SMS costs a few round trips, not one per message.
    """

    #: Requests of one batch in flight at once.
    concurrency: ClassVar[int] = 8

    def __init__(self, *, name: str, timeout: float, api_url: str, **options: Any) -> None:
        super().__init__(name=name, timeout=timeout, **options)
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.session = environment_once(requests.Session())
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._threads: ThreadPoolExecutor | None = None
        self._threads_pid: int | None = None

    def send_batch(self, messages: list[OutboundMessage]) -> list[SendResult | JobError]:
        """As BaseProvider.send_batch, `concurrency` requests at a time; after a 429 nothing more is started."""
        if len(messages) < 2 or self.concurrency < 2:
            return super().send_batch(messages)
        results: list[SendResult | JobError | None] = [None] * len(messages)
        paced: list[TransientError] = []

        def one(index: int) -> None:
            if paced:
                return
            try:
                results[index] = self.send(messages[index])
            except TransientError as exc:
                results[index] = exc
                if exc.status == 429:
                    paced.append(exc)
            except JobError as exc:
                results[index] = exc

        list(self._pool().map(one, range(len(messages))))
        wait = max((exc.retry_after or 0.0 for exc in paced), default=0.0) or None
        rest = self.not_called(wait)
        return [result if result is not None else rest for result in results]

    def _pool(self) -> ThreadPoolExecutor:
        # Threads do not survive a fork: a worker child makes its own.
        if self._threads is None or self._threads_pid != os.getpid():
            self._threads = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"{self.name}-send")
            self._threads_pid = os.getpid()
        return self._threads

    def send(self, message: OutboundMessage) -> SendResult:
        request = self.build_request(message)
        try:
            response = self.session.request(timeout=self.timeout, **request)
        except requests.RequestException as exc:
            raise classify_request_exception(exc, what=self.name) from exc
        if not 200 <= response.status_code < 300:
            raise self.classify_error(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientError(
                f"{self.name}: answer is not JSON", status=response.status_code, response_text=response.text
            ) from exc
        return self.parse_response(body, message, response)

    def build_request(self, message: OutboundMessage) -> dict[str, Any]:
        """Keyword arguments for requests.Session.request: method, url, headers, json/data, auth."""
        raise NotImplementedError

    def parse_response(self, body: Any, message: OutboundMessage, response: requests.Response) -> SendResult:
        raise NotImplementedError

    def classify_error(self, response: requests.Response) -> Exception:
        return classify_http_status(
            response.status_code,
            text=response.text,
            retry_after=response.headers.get("Retry-After"),
            what=self.name,
        )

    def close(self) -> None:
        if self._threads is not None and self._threads_pid == os.getpid():
            self._threads.shutdown(wait=True)
        self.session.close()
