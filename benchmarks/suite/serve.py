"""`faceseg serve` under load (concurrency 1, 8, 32) against FaceParser in-process."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from suite import SIZES

SAMPLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "fasseg-sample" / "images"


def _load(url: str, bodies: list[bytes], concurrency: int, requests_total: int, cap_seconds: float) -> dict:
    """A bounded load generator: `concurrency` keep-alive clients, `requests_total` requests or `cap_seconds`."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies, errors, lock = [], [0], threading.Lock()
    issued = iter(range(requests_total))
    deadline = time.perf_counter() + cap_seconds

    def client():
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        for i in issued:
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            try:
                connection.request("POST", "/parse", body=bodies[i % len(bodies)], headers={"Content-Type": "image/jpeg"})
                reply = connection.getresponse()
                reply.read()
                ok = reply.status == 200
            except OSError:
                ok = False
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
            with lock:
                (latencies.append(time.perf_counter() - start) if ok else None)
                errors[0] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return {"requests": len(latencies) + errors[0], "errors": errors[0], "requests_per_s": len(latencies) / seconds,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None}


def run(work: Path, quick: bool) -> dict:
    """Requests/s and latency of `faceseg serve` with the shipped model (1 replica on the runtime `serve`
    starts, answering on its own port: faceseg.serve.app.answer_on_the_replica; batches of up to 8, edge
    refinement on) at concurrency 1, 8 and 32, against FaceParser called in-process on the same encoded
    photos in batches of 8: FASSEG's committed photos, their long side 128 and 512 px."""
    import socket

    from ray import serve as ray_serve

    from faceseg.predict.parser import FaceParser
    from faceseg.serve.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = serve("fasseg", port=port, max_batch_size=8, block=False)
    total, cap = SIZES["serve_requests"][not quick], SIZES["serve_seconds"][not quick]
    parser = FaceParser.load("fasseg")
    photos = [cv2.imread(str(path)) for path in sorted(SAMPLE.glob("*.jpg"))]
    result = {"replicas": 1, "max_batch_size": 8, "model": "fasseg", "model_px": parser.size,
              "requests_per_level": total, "cap_seconds": cap}
    ratios = {}
    try:
        for px in (128, 512):
            bodies = []
            for photo in photos:
                scale = px / max(photo.shape[:2])
                size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
                bodies.append(cv2.imencode(".jpg", cv2.resize(photo, size, interpolation=cv2.INTER_AREA))[1].tobytes())
            _load(url, bodies, 8, 16, 60)                                   # warm: replica traced, proxy up
            parser.batch(bodies[:8])
            start = time.perf_counter()
            done = 0
            while done < total:
                chunk = [bodies[(done + i) % len(bodies)] for i in range(8)]
                parser.batch(chunk)
                done += 8
            inprocess = done / (time.perf_counter() - start)
            result[f"{px}px_inprocess_images_per_s"] = inprocess
            for concurrency in (1, 8, 32):
                figures = _load(url, bodies, concurrency, total, cap)
                result[f"{px}px_c{concurrency}"] = figures
                print(f"  serve {px}px c{concurrency}: {figures}", flush=True)
            ratios[f"serve_{px}px_c32_vs_inprocess"] = result[f"{px}px_c32"]["requests_per_s"] / inprocess
    finally:
        ray_serve.shutdown()
    result["ratios"] = ratios
    return result
