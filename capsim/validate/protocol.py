"""The HTTP contract between ``capsim serve`` and ``capsim load`` (and any other client).

POST ``INFER_PATH`` with the payload as the body:
  - ``Content-Type: image/jpeg``: a JPEG image, decoded and pre-processed by the server;
  - ``Content-Type: application/octet-stream``: a raw float32 tensor (C x H x W, C order) of
    the model's input shape, given in the ``X-Tensor-Shape`` header as ``3x224x224``.
Optional request headers: ``X-Source`` (camera / client id, an integer >= 0: per-source caps
count by it), ``X-Request-Id`` (echoed back), ``X-Priority`` (level, 0 = highest; default: the
server's ``--default-priority``), ``X-Deadline-Ms`` (drop the request as stale when its batch is
formed more than this after it was received; overrides ``--deadline-ms``; 0 = none),
``X-Frame-Index`` (the frame's number in its camera's stream, for ``--stride`` / degradation;
default: the count of the camera's frames received before it). A bad value is a 400.

200: JSON ``{"outputs": ...}`` (the model's result: top-5 classes, or boxes, or a mask summary)
plus the timing headers below. 503: the server dropped the request; JSON ``{"error": reason,
"detail": ...}`` and ``X-Drop-Reason`` (``rejected``, ``dropped_oldest``, ``timeout``, ``stale``,
``stride``, ``shutting_down``; ``stale`` also when the server runs ``--decode-latest`` and a newer
frame of the same ``X-Source`` arrived while this one waited for a decode thread). 400: a payload
or header the server cannot read (one-line reason). Every 200 and 503 answer carries ``X-Priority``,
the level it was queued at.

GET ``HEALTH_PATH``: ``ok``. GET ``METRICS_PATH``: Prometheus text format.
"""

from __future__ import annotations

INFER_PATH = "/v1/infer"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

# Response headers: every completed request carries these (milliseconds, as decimal text).
H_PREPROCESS = "X-Preprocess-Ms"     # from the body read to the input ready: waiting for a decode thread + decoding
H_DECODE = "X-Decode-Ms"             # the decode itself (JPEG decode + resize + normalise, or tensor parse)
H_QUEUE_WAIT = "X-Queue-Wait-Ms"     # from entering the batcher's queue to its batch starting
H_BATCH_SIZE = "X-Batch-Size"        # requests in the batch it ran in
H_COMPUTE = "X-Batch-Compute-Ms"     # the batch's model run on its instance
H_BATCH_OVERHEAD = "X-Batch-Overhead-Ms"  # the instance's time on the batch beyond the model run: handing
                                          # the batch to its thread and the result back to the event loop
H_POSTPROCESS = "X-Postprocess-Ms"   # turning this request's slice of the output into JSON
H_SERVER_TOTAL = "X-Server-Total-Ms"  # from the request's body being read to the response being ready
H_INSTANCE = "X-Instance"            # which model instance ran it
H_DROP = "X-Drop-Reason"
H_SOURCE = "X-Source"
H_REQUEST_ID = "X-Request-Id"
H_SHAPE = "X-Tensor-Shape"
H_PRIORITY = "X-Priority"            # request and response: priority level, 0 = highest
H_DEADLINE = "X-Deadline-Ms"         # request: this request's deadline from its arrival (0: none)
H_FRAME_INDEX = "X-Frame-Index"      # request: the frame's index in its camera's stream

TIMING_HEADERS = (H_PREPROCESS, H_DECODE, H_QUEUE_WAIT, H_BATCH_SIZE, H_COMPUTE, H_BATCH_OVERHEAD, H_POSTPROCESS,
                  H_SERVER_TOTAL, H_INSTANCE)


def infer_url(url: str) -> str:
    """The inference endpoint for a server's base URL (``http://host:port``) or the endpoint itself."""
    url = url.rstrip("/")
    return url if url.endswith(INFER_PATH) else url + INFER_PATH


def base_url(url: str) -> str:
    """The server's base URL from either form."""
    url = url.rstrip("/")
    return url[: -len(INFER_PATH)] if url.endswith(INFER_PATH) else url
