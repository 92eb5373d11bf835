"""`faceseg serve`: a FaceParser behind HTTP on Ray Serve.

    POST /parse            body: JPEG/PNG/... bytes  ->  the label map as a grey PNG (ids 0..N-1), at the
                           image's own size; X-Faceseg-Classes names the ids
    POST /parse?format=json                          ->  {"classes", "pixel_share", "size", "model", "metrics"}
    GET  /healthz                                    ->  {"status": "ok", "model", "classes"}

Each replica decodes a request on a thread (OpenCV releases the GIL) and hands the model's input to a
Batcher (faceseg/serve/batching.py): requests that wait while the network is busy share its next forward
pass, up to PASSES passes at once; then each one's probabilities are refined and resized to its own size
and encoded on its own thread, the same code path as FaceParser and `faceseg predict`.
Bad requests get a 4xx and a message; the replica keeps serving.

Bounded work per request (docs/security.md): a body is read as it arrives, up to MAX_BODY_BYTES (chunked
or not) and within BODY_TIMEOUT_S, else 413 or 408; at most DECODES images are decoded at once, each
bounded by the bytes its decode takes (faceseg/data/decode.py); a replica admits MAX_ONGOING requests,
so slow clients hold slots for BODY_TIMEOUT_S at most and /healthz, which reads no body, still answers.

`serve()` with one replica on a runtime it starts lets the replica answer on the port itself (Serve's
throughput-optimized mode, answer_on_the_replica); otherwise Serve's proxy listens there (docs/serving.md).
Also deployable from a Serve config file: `serve deploy cluster/serve.yaml` (import_path
faceseg.serve.app:build_app).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

import numpy as np

from faceseg.data.decode import BadFileError, encode_png
from faceseg.errors import FacesegError
from faceseg.logs import verbose
from faceseg.runtime import Needs, connect, free_port
from faceseg.serve import MAX_BATCH_SIZE
from faceseg.serve.batching import Batcher

MAX_BODY_BYTES = 16 << 20
BODY_TIMEOUT_S = 15.0         # to receive a whole body
DECODES = 2                   # images decoded at once per replica
# Forward passes at once: two keep the network busy while a pass's inputs are stacked and its outputs handed
# back; more would split the waiting requests into smaller batches (benchmarks/results: the serve suite).
PASSES = 2
MAX_ONGOING = 64              # requests a replica admits at once: bodies arriving, decoding, in a batch
IMAGE_TYPES = ("image/", "application/octet-stream")
DEPLOYMENT = "FaceParsingService"


class BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request, limit: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The request's body, read chunk by chunk: stops at `limit` bytes (413) or after `timeout` s (408),
    whatever Content-Length says."""
    async def gather() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"the body is more than {limit} bytes; at most {limit} are accepted")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(gather(), timeout)
    except asyncio.TimeoutError:
        raise BodyError(408, f"the body did not arrive within {timeout:g} s") from None


def _service_class():
    """The deployment class, defined on first use so that importing faceseg needs no ray[serve]."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @serve.deployment(name=DEPLOYMENT)
    class FaceParsingService:
        def __init__(self, model: str, max_batch_size: int = MAX_BATCH_SIZE):
            from faceseg.backend import quiet_tensorflow
            from faceseg.predict.parser import FaceParser
            from faceseg.runtime import keep_freed_memory

            keep_freed_memory()
            quiet_tensorflow()
            self.decodes = asyncio.Semaphore(DECODES)
            self.parser = FaceParser.load(model)
            self.model = str(self.parser.info.location)
            self.metrics = self.parser.info.meta.get("metrics", {})
            self.png_headers = {"X-Faceseg-Classes": json.dumps(list(self.parser.classes))}
            self.forward = Batcher(self._forward, max_batch_size, PASSES)

        async def _forward(self, pixels: list[np.ndarray]) -> list:
            """The network, for every request of a batch: each one's probabilities."""
            probs = await asyncio.to_thread(self.parser.probabilities, np.stack(pixels))
            return list(probs)

        def _read(self, body: bytes):
            pixels, (height, width), rgb = self.parser.read(body)
            return pixels, (height, width), self.parser.guide(rgb, height, width)

        def _png(self, probs, pixels, height: int, width: int, guide) -> bytes:
            return encode_png("response", self.parser.label_map(probs, pixels, height, width, guide))

        def _error(self, status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=status)

        async def __call__(self, request: Request):
            path = request.url.path.rstrip("/")
            if path.endswith("/healthz"):
                return JSONResponse({"status": "ok", "model": self.model, "classes": list(self.parser.classes)})
            if not path.endswith("/parse"):
                return self._error(404, f"no route {request.url.path}; POST an image to /parse")
            if request.method != "POST":
                return self._error(405, "POST an image (JPEG/PNG bytes) to /parse")
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind and not kind.startswith(IMAGE_TYPES):
                return self._error(415, f"content type {kind!r} is not an image; send JPEG or PNG bytes "
                                        "(e.g. curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg')")
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return self._error(413, f"the body is {declared[:20]} bytes; at most {MAX_BODY_BYTES} are accepted")
            try:
                body = await read_body(request)
            except BodyError as error:
                return self._error(error.status, str(error))
            if not body:
                return self._error(400, "empty body: POST the image's bytes")
            try:
                async with self.decodes:
                    item = await asyncio.to_thread(self._read, body)
            except BadFileError as error:
                status = 413 if "more than" in error.reason else 400
                return self._error(status, f"the body is not a usable image: {error.reason}")
            pixels, (height, width), guide = item
            probs = await self.forward(pixels)
            # Each request's own label map on a thread of its own: while the next batch is in the network.
            if request.query_params.get("format", "png") != "json":
                png = await asyncio.to_thread(self._png, probs, pixels, height, width, guide)
                return Response(png, media_type="image/png", headers=self.png_headers)
            ids = await asyncio.to_thread(self.parser.label_map, probs, pixels, height, width, guide)
            counts = np.bincount(ids.reshape(-1), minlength=len(self.parser.classes)) / ids.size
            return JSONResponse({"classes": list(self.parser.classes), "size": list(ids.shape),
                                 "pixel_share": {name: round(float(share), 6)
                                                 for name, share in zip(self.parser.classes, counts)},
                                 "model": self.model, "metrics": self.metrics})

    return FaceParsingService


def build_app(args: dict):
    """A Serve application from a config file's `args`: model (required), max_batch_size, replicas, num_gpus,
    num_cpus."""
    from faceseg.model.saved import inspect_model

    args = dict(args)
    model = args.pop("model", None)
    if not model:
        raise FacesegError("the faceseg Serve application needs args.model: a shipped name, a run folder, .keras "
                           "file or URI")
    inspect_model(model)                     # refuse an unsafe or missing model before any replica starts
    replicas, gpus, cpus = int(args.pop("replicas", 1)), float(args.pop("num_gpus", 0)), float(args.pop("num_cpus", 1))
    if "batch_wait_timeout_s" in args:
        raise FacesegError("faceseg Serve takes no batch_wait_timeout_s: a batch starts as soon as the network is "
                           "free, with every request waiting then; remove it from the config's args")
    unknown = set(args) - {"max_batch_size"}
    if unknown:
        raise FacesegError(f"unknown faceseg Serve argument(s): {', '.join(sorted(unknown))}; known: model, "
                           "max_batch_size, replicas, num_gpus, num_cpus")
    options = {"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {})}
    # Serve lets 5 requests into a replica at a time by default: batches could never fill. Requests waiting
    # for their bodies or a decode slot are cheap (bounded above), and /healthz must find a slot among them.
    ongoing = max(MAX_ONGOING, 4 * int(args.get("max_batch_size", MAX_BATCH_SIZE)))
    return _service_class().options(num_replicas=replicas, ray_actor_options=options,
                                    max_ongoing_requests=ongoing).bind(model=str(model), **args)


def _check_port_free(host: str, port: int) -> None:
    try:
        free_port(host, port)
    except OSError as error:
        raise FacesegError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port "
                           "(or --host)") from None


def answer_on_the_replica(port: int) -> dict:
    """Ray Serve's throughput-optimized mode with its one replica listening on `port` itself ("direct
    ingress"), for the processes of a runtime about to start: requests skip the proxy's extra hop and actor
    calls, which cost about as much as the work at small sizes (benchmarks/results: the serve suite). The
    replica and proxy have no load balancer in front, so they drain for 1 s on shutdown, not 30, and a replica
    that dies gets the port back at once (Serve holds a freed port out of use for HAProxy's sake)."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),      # exclusive: exactly `port`
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1",
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, num_gpus: float = 0.0,
          max_batch_size: int = MAX_BATCH_SIZE, address: str | None = None, block: bool = True) -> str:
    """Deploy the model on Ray Serve at http://host:port/; returns that URL (blocks until Ctrl-C if `block`).

    One replica on a runtime this call starts answers on host:port itself (answer_on_the_replica); otherwise
    (a cluster, a runtime already running, several replicas) Serve's proxy listens there and routes to them."""
    import ray

    from faceseg.model.saved import inspect_model

    if replicas < 1 or max_batch_size < 1 or num_gpus < 0 or not 0 < port < 65536:
        raise FacesegError("--replicas and --max-batch-size must be >= 1, --num-gpus >= 0, --port 1..65535")
    inspect_model(model)
    local = not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))
    direct = local and replicas == 1
    if local:
        _check_port_free(host, port)
    if direct:
        os.environ.update(answer_on_the_replica(port))       # before Ray starts: its processes inherit them
    share = connect(address, Needs(cpus=0.0 if num_gpus else replicas, gpus=replicas * num_gpus,
                                   what=f"{replicas} Serve replica(s)", flags="--replicas / --num-gpus"))
    from ray import serve as ray_serve

    # Serve's INFO lines name the proxy's address, which is not the one to use with direct ingress.
    quiet = None if verbose() else {"log_level": "WARNING"}
    logging.getLogger("ray.serve").setLevel(logging.INFO if verbose() else logging.WARNING)
    # With direct ingress the proxy still runs (Serve opens the replica's port only then), on a free port.
    ray_serve.start(http_options={"host": host, "port": free_port(host) if direct else port}, logging_config=quiet)
    app = build_app({"model": model, "replicas": replicas, "num_gpus": num_gpus,
                     "num_cpus": 0.01 if num_gpus else share, "max_batch_size": max_batch_size})
    ray_serve.run(app, name="faceseg", route_prefix="/", logging_config=quiet)
    url = f"http://{host}:{port}"
    print(f"serving {model} at {url}/parse ({replicas} replica(s)); health: {url}/healthz", flush=True)
    if block:
        print(f"try: curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {url}/parse -o labels.png\n"
              "Ctrl-C (or SIGTERM) stops it", flush=True)
        import signal
        import threading

        stop = threading.Event()
        # SIGTERM is how service managers stop a process, and a background job's SIGINT may be ignored.
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda *_: stop.set())
        stop.wait()
        ray_serve.shutdown()
        print("stopped", flush=True)
    return url
