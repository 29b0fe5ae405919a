"""HTTP API contract, upload security and bounded concurrency of `animeprov serve` (FastAPI TestClient)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import write_tiny_split
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from animeprov.cli import app as cli_app
from animeprov.fingerprint import compute_fingerprints, labelled_images, write_fingerprints
from animeprov.predict import STABILITY_CHECKS, Predictor
from animeprov.serve import ServeSettings, create_app
from animeprov.serve.app import InferenceGate, display_name
from animeprov.train import TrainConfig, train

CLASSES = ["gen-a", "gen-b", "human"]  # the tiny split's classes, as the run sorts them
PREDICTION_KEYS = {
    "source",
    "probabilities",
    "p_generated",
    "verdict",
    "generator",
    "view",
    "n_views",
    "evidence",
    "notes",
    "error",
}


# ----------------------------------------------------------------------------------------------
# Fixtures: one tiny trained run (a few seconds) and its fingerprints, shared by the module
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    split = write_tiny_split(root / "data")
    config = TrainConfig(data=str(split), variant="cnn-dct-mask", size=32, epochs=2, batch_size=8, seed=1)
    train(config, root / "run")
    fingerprints = compute_fingerprints(labelled_images(root / "data"), size=32)
    write_fingerprints(fingerprints, root / "fingerprints")
    return root / "run"


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_checkpoint(run, device="cpu", backend="torch")  # the onnx default has its test


@pytest.fixture(scope="module")
def client(run, predictor) -> TestClient:
    app = create_app(run, predictor=predictor, fingerprints=run.parent / "fingerprints")
    with TestClient(app) as test_client:
        yield test_client


def make_client(run, predictor, **settings) -> TestClient:
    return TestClient(create_app(run, predictor=predictor, settings=ServeSettings(**settings)))


def png_bytes(size: int = 32, seed: int = 0, text: dict[str, str] | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def upload(client: TestClient, data: bytes, name: str = "a.png", content_type: str = "image/png", **params):
    return client.post("/v1/predict", params=params, files={"file": (name, data, content_type)})


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert image.format == "PNG"
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data: a decompression-bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------
# Endpoints and their schemas
# ----------------------------------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "busy": 0,
        "busy_heatmaps": 0,
        "max_concurrent": ServeSettings().max_concurrent,
    }


def test_model_describes_classes_variant_version_thresholds_and_limits(client, predictor):
    body = client.get("/v1/model").json()
    assert body["classes"] == CLASSES
    assert body["variant"] == "cnn-dct-mask"
    assert body["size"] == 32
    assert body["human_class"] == "human"
    assert body["animeprov"] == "0.1.0"
    assert body["run"] == "run"  # the folder's name, not the server's path
    thresholds = body["thresholds"]  # the run was calibrated at the end of training
    assert thresholds["ai"] == predictor.calibration.ai_threshold
    assert thresholds["artist"] == predictor.calibration.artist_threshold
    assert body["limits"] == {
        "max_upload_bytes": ServeSettings().max_upload_bytes,
        "max_pixels": ServeSettings().max_pixels,
        "max_concurrent": ServeSettings().max_concurrent,
        "max_waiting": ServeSettings().max_waiting,
        "max_heatmap_views": ServeSettings().max_heatmap_views,
    }


def test_predict_matches_the_predictor_and_the_documented_schema(client, predictor):
    data = png_bytes(seed=3)
    response = upload(client, data, name="picture.png")
    assert response.status_code == 200
    body = response.json()
    assert PREDICTION_KEYS <= set(body)
    assert "heatmap_png" not in body or body["heatmap_png"] is None  # only when asked
    expected = predictor.predict(data, name="picture.png")  # the trusted reference: the library itself
    assert body["source"] == "picture.png"
    assert list(body["probabilities"]) == CLASSES
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-9)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["p_generated"] == pytest.approx(1 - body["probabilities"]["human"])
    assert body["verdict"] == expected.verdict and body["verdict"] in ("artist", "ai", "unsure")
    assert (body["view"], body["n_views"], body["error"]) == ("crop", 1, None)
    assert body["evidence"]["items"] == [] and "forged" in body["evidence"]["caveat"]


def test_larger_images_are_tiled_and_views_can_be_chosen(client):
    data = png_bytes(size=64)
    assert (upload(client, data).json()["view"], upload(client, data).json()["n_views"]) == ("tiles", 4)
    assert upload(client, data, view="crop").json()["n_views"] == 1


def test_smaller_images_need_pad_or_resize(client):
    small = png_bytes(size=16)
    refused = upload(client, small)
    assert refused.status_code == 422 and "smaller than the 32x32 view" in refused.json()["detail"]
    assert "use view=pad" in refused.json()["detail"]  # the query parameter, not the CLI option
    padded = upload(client, small, view="pad")
    assert padded.status_code == 200 and padded.json()["view"] == "pad"


def test_heatmap_is_a_png_overlay_of_the_image_size(client):
    body = upload(client, png_bytes(size=64), heatmap="true").json()
    assert decode_data_url(body["heatmap_png"]).size == (64, 64)


def test_heatmap_overlay_is_shrunk_for_display(run, predictor):
    with make_client(run, predictor, display_size=40) as small_display:
        body = upload(small_display, png_bytes(size=64), heatmap="true").json()
    assert decode_data_url(body["heatmap_png"]).size == (40, 40)


def test_heatmaps_of_many_tiles_are_refused(run, predictor):
    with make_client(run, predictor, max_heatmap_views=2) as limited:
        tiled = upload(limited, png_bytes(size=64), heatmap="true")
        cropped = upload(limited, png_bytes(size=64), heatmap="true", view="crop")
    assert tiled.status_code == 422 and "heatmap of 4 tiles is refused" in tiled.json()["detail"]
    assert cropped.status_code == 200 and cropped.json()["heatmap_png"]


def test_a_tile_budget_is_served_and_lets_heatmaps_of_large_images_through(run):
    settings = ServeSettings(max_heatmap_views=2)
    with TestClient(create_app(run, settings=settings, device="cpu", max_tiles=1)) as budget:
        assert budget.get("/v1/model").json()["max_tiles"] == 1
        body = upload(budget, png_bytes(size=64), heatmap="true").json()
    assert body["view"] == "tiles" and body["n_views"] == 1 and body["heatmap_png"]
    loaded = Predictor.from_checkpoint(run, device="cpu")
    for option in ({"max_tiles": 1}, {"backend": "torch"}, {"checks": ("jpeg:90",)}):
        with pytest.raises(ValueError, match="max_tiles, backend and checks are the predictor's"):
            create_app(run, predictor=loaded, **option)


def test_the_onnx_backend_is_served_with_the_same_answers(run, client):
    with TestClient(create_app(run, device="cpu")) as in_onnx:  # auto: onnxruntime, installed here
        assert in_onnx.get("/v1/model").json()["backend"] == "onnx"
        got = upload(in_onnx, png_bytes(size=64)).json()
    expected = upload(client, png_bytes(size=64)).json()
    assert client.get("/v1/model").json()["backend"] == "torch"
    assert got["p_generated"] == pytest.approx(expected["p_generated"], abs=1e-5)


def test_spectrum_comes_with_the_fingerprint_of_the_top_class(client):
    body = upload(client, png_bytes(size=64), spectrum="true").json()
    spectrum = body["spectrum"]
    top = max(body["probabilities"], key=body["probabilities"].get)
    assert spectrum["compared_class"] == top
    assert spectrum["shape"] == [32, 32]  # a centre crop of the fingerprints' size
    assert decode_data_url(spectrum["image_png"]).size == (32, 32)
    picture = client.get(spectrum["fingerprint_url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (32, 32)


def test_fingerprint_list(client):
    body = client.get("/v1/fingerprints").json()
    assert body["available"] is True
    assert body["classes"] == CLASSES
    assert body["shape"] == [32, 32]


def test_without_fingerprints_the_api_says_how_to_make_them(run, predictor):
    with make_client(run, predictor) as bare:  # the run folder itself has no fingerprints/
        listing = bare.get("/v1/fingerprints").json()
        body = upload(bare, png_bytes(), spectrum="true").json()
        missing = bare.get("/v1/fingerprints/human.png")
    assert listing["available"] is False and listing["classes"] == []
    assert "animeprov fingerprint" in listing["message"]
    assert body["spectrum"]["fingerprint_url"] is None and body["spectrum"]["shape"] == [32, 32]
    assert missing.status_code == 404 and "animeprov fingerprint" in missing.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/fingerprints/nobody.png",
        "/v1/fingerprints/..%2F..%2Fconfig.png",
        "/v1/fingerprints/%2E%2E.png",
        "/static/app.py",
        "/static/..%2Fapp.py",
        "/static/%2E%2E%2F%2E%2E%2Fio.py",
    ],
)
def test_request_paths_never_reach_the_file_system(client, path):
    assert client.get(path).status_code == 404


def test_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (
        "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text
    )  # no CDN
    script = client.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script.text  # everything from uploads is written as text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_openapi_documents_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/predict",
        "/v1/model",
        "/v1/fingerprints",
        "/v1/fingerprints/{class_name}.png",
        "/healthz",
    } <= set(schema["paths"])
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])
    fields = schema["components"]["schemas"]["PredictionOut"]["properties"]
    assert PREDICTION_KEYS | {"heatmap_png", "spectrum"} == set(fields)
    assert client.get("/docs").status_code == 200


# ----------------------------------------------------------------------------------------------
# Bad uploads: a 4xx with a message, never a 500
# ----------------------------------------------------------------------------------------------


def truncated_png() -> bytes:
    data = png_bytes(size=32)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "name", "content_type", "status", "message"),
    [
        (b"", "empty.png", "image/png", 422, "empty file"),
        (b"hello, I am text\n" * 20, "notes.txt", "text/plain", 415, "not a recognised image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "lie.png", "image/png", 415, "not a recognised image"),
        (b"%PDF-1.4\n" + b"0" * 200, "doc.jpg", "image/jpeg", 415, "not a recognised image"),
        (png_header_only(100_000, 100_000), "bomb.png", "image/png", 413, "pixels"),
        (png_header_only(5_000, 5_000), "big.png", "image/png", 413, "exceeds the limit of 16,777,216"),
        (truncated_png(), "cut.png", "image/png", 422, "corrupt or truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "header.png", "image/png", 422, "invalid PNG header"),
    ],
    ids=[
        "empty",
        "text",
        "svg-named-png",
        "pdf-named-jpg",
        "bomb",
        "over-pixel-limit",
        "truncated",
        "bad-header",
    ],
)
def test_bad_uploads_get_a_4xx_with_a_message(client, data, name, content_type, status, message):
    response = upload(client, data, name=name, content_type=content_type)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail and detail.startswith(name)


def test_content_is_sniffed_not_the_name_or_content_type(client):
    response = upload(client, png_bytes(), name="holiday.txt", content_type="text/plain")
    assert response.status_code == 200 and response.json()["source"] == "holiday.txt"


def test_oversized_body_is_refused_before_it_is_read(run, predictor):
    with make_client(run, predictor, max_upload_bytes=2_000) as small:
        response = upload(small, png_bytes(size=64))
    assert response.status_code == 413
    assert response.json() == {"detail": "upload too large: the request body is limited to 2,000 bytes"}


def test_oversized_chunked_body_without_length_is_cut_off(run, predictor):
    data = png_bytes(size=64)
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with make_client(run, predictor, max_upload_bytes=2_000) as small:
        response = small.post(
            "/v1/predict",
            content=iter([body[i : i + 500] for i in range(0, len(body), 500)]),  # no Content-Length
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 413 and "2,000 bytes" in response.json()["detail"]


def test_pixel_limit_is_configurable(run, predictor):
    with make_client(run, predictor, max_pixels=40 * 40) as strict:
        assert upload(strict, png_bytes(size=32)).status_code == 200
        response = upload(strict, png_bytes(size=64))
    assert response.status_code == 413 and "exceeds the limit of 1,600" in response.json()["detail"]


def test_missing_field_and_bad_options_are_422_with_a_message(client):
    missing = client.post("/v1/predict", files={"picture": ("a.png", png_bytes(), "image/png")})
    assert missing.status_code == 422 and "'file'" in missing.json()["detail"]
    bad_view = upload(client, png_bytes(), view="sideways")
    assert bad_view.status_code == 422 and "view" in bad_view.json()["detail"]


def test_upload_names_are_labels_only():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\x\\cat.png") == "cat.png"
    assert display_name("a\x00b\nc.png") == "abc.png"
    assert display_name("") == "upload" and display_name(None) == "upload"
    assert len(display_name("x" * 1000)) == 200


# ----------------------------------------------------------------------------------------------
# Metadata evidence stays beside the verdict
# ----------------------------------------------------------------------------------------------


def test_metadata_evidence_is_reported_but_never_changes_the_probabilities(client):
    parameters = "1girl, smile\nNegative prompt: bad hands\nSteps: 20, Sampler: Euler a, Model: anything-v4.5"
    plain = upload(client, png_bytes(seed=7)).json()
    tagged = upload(client, png_bytes(seed=7, text={"parameters": parameters})).json()
    assert tagged["evidence"]["indicates_ai"] is True
    assert tagged["evidence"]["named_generators"] == ["anything-v4.5"]
    assert plain["evidence"]["indicates_ai"] is None
    assert tagged["probabilities"] == plain["probabilities"] and tagged["verdict"] == plain["verdict"]


# ----------------------------------------------------------------------------------------------
# CORS and concurrency
# ----------------------------------------------------------------------------------------------


def test_cors_is_off_by_default_and_allows_only_listed_origins(run, predictor, client):
    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/model", headers=origin).headers
    with make_client(run, predictor, cors_origins=("http://friend.example",)) as open_client:
        allowed = open_client.get("/v1/model", headers={"Origin": "http://friend.example"})
        other = open_client.get("/v1/model", headers=origin)
    assert allowed.headers["access-control-allow-origin"] == "http://friend.example"
    assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ValueError, match="not allowed"):
        ServeSettings(cors_origins=("*",))


def test_host_header_check_stops_dns_rebinding(run, predictor):
    with make_client(run, predictor, allowed_hosts=("127.0.0.1", "localhost")) as strict:
        assert strict.get("/healthz", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert strict.get("/healthz", headers={"host": "attacker.example"}).status_code == 400


def test_unexpected_errors_are_json_500s(run, predictor):
    class Broken:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def predict(self, *args, **kwargs):
            raise RuntimeError("boom")

    app = create_app(run, predictor=Broken())
    with TestClient(app, raise_server_exceptions=False) as broken:
        response = upload(broken, png_bytes())
    assert response.status_code == 500 and response.json() == {"detail": "internal error (RuntimeError)"}


def test_gate_bounds_running_and_waiting_calls():
    gate = InferenceGate(limit=2, max_waiting=1)
    running, peak = 0, 0
    lock = threading.Lock()

    def work() -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return "done"

    async def main():
        return await asyncio.gather(*(gate.run(work) for _ in range(5)), return_exceptions=True)

    # In a thread of its own: after a browser test, Playwright's sync API keeps an event loop running in
    # this thread, where asyncio.run() is refused.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        results = pool.submit(asyncio.run, main()).result()
    assert results.count("done") == 3  # 2 running + 1 waiting
    refused = [r for r in results if r != "done"]
    assert len(refused) == 2 and all(getattr(r, "status_code", None) == 503 for r in refused)
    assert peak == 2 and gate.in_gate == 0


class BlockingPredictor:
    """Wraps the real predictor; predict() waits until released, as a long CPU-bound prediction would.
    With `only_heatmaps`, only heatmap requests wait."""

    def __init__(self, inner: Predictor, only_heatmaps: bool = False) -> None:
        self.inner = inner
        self.only_heatmaps = only_heatmaps
        self.started = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, *args, heatmap: bool = False, **kwargs):
        if heatmap or not self.only_heatmaps:
            self.started.set()
            assert self.release.wait(timeout=20)
        return self.inner.predict(*args, heatmap=heatmap, **kwargs)


def post_in_thread(url: str, params: dict, result: dict) -> threading.Thread:
    def send() -> None:
        files = {"file": ("a.png", png_bytes())}
        result["response"] = httpx.post(f"{url}/v1/predict", params=params, files=files, timeout=30)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_predictions_run_off_the_event_loop(run, predictor, live_server):
    blocking = BlockingPredictor(predictor)
    url = live_server(create_app(run, predictor=blocking))
    result = {}
    thread = post_in_thread(url, {}, result)
    try:
        assert blocking.started.wait(timeout=10)
        started = time.perf_counter()
        health = httpx.get(f"{url}/healthz", timeout=5)  # answered while the prediction is still running
        assert time.perf_counter() - started < 2
        assert health.json()["busy"] == 1
    finally:
        blocking.release.set()
        thread.join(timeout=30)
    assert result["response"].status_code == 200


def test_a_running_heatmap_does_not_hold_up_predictions(run, predictor, live_server):
    blocking = BlockingPredictor(predictor, only_heatmaps=True)
    url = live_server(create_app(run, predictor=blocking, settings=ServeSettings(max_concurrent=1)))
    result = {}
    thread = post_in_thread(url, {"heatmap": "true"}, result)
    try:
        assert blocking.started.wait(timeout=10)
        plain = httpx.post(f"{url}/v1/predict", files={"file": ("b.png", png_bytes())}, timeout=10)
        assert plain.status_code == 200 and plain.json()["heatmap_png"] is None
        assert httpx.get(f"{url}/healthz").json()["busy_heatmaps"] == 1
    finally:
        blocking.release.set()
        thread.join(timeout=30)
    assert result["response"].json()["heatmap_png"].startswith("data:image/png;base64,")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def test_cli_refuses_a_missing_fingerprint_folder(run, tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(run), "--fingerprints", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such fingerprint folder" in " ".join(result.output.split())


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in " ".join(result.output.split())


def test_cli_binds_to_localhost_checks_the_host_and_limits_connections(run, monkeypatch):
    import uvicorn

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: captured.update(app=app, **options))
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: captured.update(threads=n))
    result = CliRunner().invoke(cli_app, ["serve", str(run), "--max-waiting", "4"])
    assert captured["threads"] == max(1, threads // 2)  # each of 2 concurrent predictions: its share
    assert result.exit_code == 0, result.output
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 8000)
    settings = ServeSettings(max_waiting=4)
    assert settings.request_limit() == 19  # requests in flight (the app's JSON 503 beyond)
    assert captured["limit_concurrency"] == settings.connection_limit() == 76  # open connections
    assert captured["http"].header_timeout == 10.0
    with TestClient(captured["app"]) as served:
        assert served.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
        assert served.get("/healthz", headers={"host": "rebound.example"}).status_code == 400
        model = served.get("/v1/model", headers={"host": "localhost:8000"}).json()
    assert (model["backend"], model["max_tiles"], model["checks"]) == ("onnx", 16, [])
    options = ["--stability", "--max-tiles", "0", "--backend", "torch"]
    assert CliRunner().invoke(cli_app, ["serve", str(run), *options]).exit_code == 0
    with TestClient(captured["app"]) as served:
        model = served.get("/v1/model", headers={"host": "localhost:8000"}).json()
    assert (model["backend"], model["max_tiles"], model["checks"]) == ("torch", None, list(STABILITY_CHECKS))


# ----------------------------------------------------------------------------------------------
# Issue 15: path disclosure, several file parts, JSON for every error, slow clients
# ----------------------------------------------------------------------------------------------


def test_fingerprint_messages_never_show_the_servers_paths(run, predictor, tmp_path):
    # The run as given on the command line (absolute here) must not reach clients; its last part may.
    empty = tmp_path / "secret-place" / "prints"
    empty.mkdir(parents=True)
    broken = tmp_path / "secret-place" / "broken"
    broken.mkdir()
    (broken / "human.npy").write_bytes(b"not numpy")
    for fingerprints in (None, empty, broken, run.parent / "fingerprints"):
        app = create_app(run, predictor=predictor, fingerprints=fingerprints)
        with TestClient(app) as served:
            text = served.get("/v1/fingerprints").text + served.get("/v1/fingerprints/nobody.png").text
        assert str(tmp_path) not in text and str(run.parent) not in text, text


def test_several_file_parts_are_refused(client):
    files = [
        ("file", ("a.png", png_bytes(seed=1), "image/png")),
        ("file", ("b.png", png_bytes(seed=2), "image/png")),
    ]
    response = client.post("/v1/predict", files=files)  # used to judge b.png only, silently
    assert response.status_code == 422
    assert response.json() == {"detail": "2 'file' parts received; send one image per request"}


def test_host_check_answers_json(run, predictor):
    with make_client(run, predictor, allowed_hosts=("127.0.0.1",)) as strict:
        refused = strict.get("/healthz", headers={"host": "attacker.example"})  # was text/plain
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
    assert refused.json() == {"detail": "invalid Host header: this server only answers to 127.0.0.1"}


def test_cli_reports_an_unreadable_run_file_clearly(run, monkeypatch):
    real_read_text = Path.read_text

    def refusing(path, *args, **kwargs):  # root ignores modes, so simulate another user's 0600 file
        if path.name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refusing)
    result = CliRunner().invoke(cli_app, ["serve", str(run)])  # was a PermissionError traceback
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{run / 'config.json'}: permission denied" in said


def served_by_the_cli(run, monkeypatch, *options: str):
    """Start, on a free loopback port, the server `animeprov serve RUN *options` would run."""
    import socket

    import uvicorn

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    result = CliRunner().invoke(cli_app, ["serve", str(run), *options])
    assert result.exit_code == 0, result.output
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        captured["port"] = probe.getsockname()[1]
    app = captured.pop("app")
    server = uvicorn.Server(uvicorn.Config(app, **captured))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    return server, thread, captured["port"]


def test_slow_clients_do_not_block_serve_and_are_cut_off(run, monkeypatch):
    import socket

    server, thread, port = served_by_the_cli(
        run, monkeypatch, "--max-concurrent", "1", "--max-waiting", "0", "--header-timeout", "0.5"
    )
    slow = []
    try:
        # More half-sent requests than requests in flight allowed (10): they used to fill uvicorn's
        # connection limit, and every other client got 503 for as long as they stayed open.
        for _ in range(ServeSettings(max_concurrent=1, max_waiting=0).request_limit() + 2):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: never ends
            slow.append(connection)
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        for connection in slow:  # the header timeout closes them (recv gives b"" at end of stream)
            assert connection.recv(100) == b""

        # Requests whose body is still coming are in flight: beyond the limit, a JSON 503 (was text/plain).
        for _ in range(ServeSettings(max_concurrent=1, max_waiting=0).request_limit()):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999\r\n"
            connection.sendall(head + b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            slow.append(connection)
        time.sleep(0.3)
        busy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert busy.status_code == 503 and busy.headers["content-type"] == "application/json"
        assert busy.headers["retry-after"] == "1" and "too many requests" in busy.json()["detail"]

        with socket.create_connection(("127.0.0.1", port), timeout=5) as bad:
            bad.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
            reply = b""
            while chunk := bad.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert "invalid HTTP request" in json.loads(body)["detail"]
    finally:
        for connection in slow:
            connection.close()
        server.should_exit = True
        thread.join(10)
