"""Uploading recordings over the JSON API and browsing detections in the review pages."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf
from starlette.testclient import TestClient
from test_review_support import add_site, log_in, sessions_for

from scoring import keys
from scoring.pipelines.base import Context, Job
from scoring.pipelines.whale import WhalePipeline
from scoring.whale import detector
from server.settings import Settings


def flac_bytes(seconds: float, sr: int = 8_000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    audio = 0.2 * np.sin(2 * np.pi * 500 * t) + 0.01 * np.random.default_rng(0).standard_normal(
        len(t)
    )
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), sr, format="FLAC")
    return buf.getvalue()


def auth(settings: Settings) -> dict[str, str]:
    world = add_site(sessions_for(settings))
    return {"Authorization": f"Bearer {world.site_key}.{world.secret}"}


def uploads(settings: Settings) -> list[Path]:
    folder = settings.data_dir / "whale" / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_upload_stores_the_file_and_queues_a_job(
    client: TestClient, app_settings: Settings, redis_client: redis.Redis
) -> None:
    headers = auth(app_settings)
    body = flac_bytes(12.0)
    response = client.post(
        "/api/whale/clips?name=bay.flac",
        content=body,
        headers={**headers, "content-type": "audio/flac"},
    )
    assert response.status_code == 202, response.text
    doc = response.json()
    assert doc["sample_rate"] == 8_000 and doc["duration_s"] == pytest.approx(12.0)
    [stored] = uploads(app_settings)
    assert stored.read_bytes() == body
    [(_, [(_, fields)])] = redis_client.xread({keys.jobs_stream("whale"): "0"})
    assert fields[b"clip_id"] == str(doc["clip_id"]).encode()
    assert fields[b"job_id"] == doc["job_id"].encode()
    clip = client.get(f"/api/whale/clips/{doc['clip_id']}", headers=headers).json()
    assert clip["status"] == "pending" and clip["name"] == "bay.flac"


def test_multipart_upload(client: TestClient, app_settings: Settings) -> None:
    headers = auth(app_settings)
    files = {"file": ("song.flac", flac_bytes(5.0), "audio/flac")}
    response = client.post("/api/whale/clips", files=files, headers=headers)
    assert response.status_code == 202, response.text
    clip = client.get(f"/api/whale/clips/{response.json()['clip_id']}", headers=headers)
    assert clip.json()["name"] == "song.flac"


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", "empty_audio"), (b"definitely not audio" * 50, "corrupt_audio")],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client: TestClient, app_settings: Settings, redis_client: redis.Redis, body: bytes, code: str
) -> None:
    response = client.post("/api/whale/clips", content=body, headers=auth(app_settings))
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert uploads(app_settings) == []
    assert redis_client.exists(keys.jobs_stream("whale")) == 0


def test_unsupported_format_is_refused(client: TestClient, app_settings: Settings) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(8_000, dtype=np.float32), 8_000, format="AIFF")
    response = client.post("/api/whale/clips", content=buf.getvalue(), headers=auth(app_settings))
    assert response.status_code == 400 and response.json()["error"] == "unsupported_format"


def test_the_api_needs_the_site_secret(client: TestClient, app_settings: Settings) -> None:
    world = add_site(sessions_for(app_settings))
    wrong = {"Authorization": f"Bearer {world.site_key}.not-the-secret"}
    assert client.post("/api/whale/clips", content=flac_bytes(1.0)).status_code == 401
    assert (
        client.post("/api/whale/clips", content=flac_bytes(1.0), headers=wrong).status_code == 401
    )
    assert client.get("/api/whale/clips/1", headers=wrong).status_code == 401
    assert uploads(app_settings) == []
    assert client.get("/api/whale/clips/999", headers=auth(app_settings)).status_code == 404


def analyse(settings: Settings, clip_id: int) -> None:
    """Run the pipeline on a clip as the worker would (decode, process, persist)."""
    ctx = Context(sessions_for(settings), None, settings.model_dir, settings.data_dir)  # type: ignore[arg-type]
    pipe = WhalePipeline(ctx)
    pipe.detector = detector.untrained("resnet18")
    pipe.detector.threshold = 0.0
    job = Job(f"whale:test-{clip_id}", "whale", {"clip_id": str(clip_id)})
    item = asyncio.run(pipe.decode(job))
    result = pipe.process(item)
    with ctx.sessions() as session, session.begin():
        pipe.persist(session, job, item, result)


def test_detections_are_served_and_browsable(client: TestClient, app_settings: Settings) -> None:
    headers = auth(app_settings)
    clip_id = client.post(
        "/api/whale/clips?name=reef.flac", content=flac_bytes(20.0), headers=headers
    ).json()["clip_id"]
    assert client.get("/whale", follow_redirects=False).status_code in (302, 303)
    analyse(app_settings, clip_id)

    doc = client.get(f"/api/whale/clips/{clip_id}", headers=headers).json()
    assert doc["status"] == "done" and doc["untrained"] is True
    assert len(doc["detections"]) == 1 and len(doc["windows"]) == 10
    assert doc["detections"][0]["end_s"] == pytest.approx(20.0, abs=0.01)

    log_in(client)
    listing = client.get("/whale")
    assert listing.status_code == 200 and "reef.flac" in listing.text
    page = client.get(f"/whale/clips/{clip_id}")
    assert page.status_code == 200
    assert 'id="spectrogram"' in page.text and 'id="detections"' in page.text
    assert "untrained" in page.text
    image = client.get(f"/whale/clips/{clip_id}/spectrogram.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/whale/clips/424242").status_code == 404


def test_a_site_lists_and_reads_only_its_own_clips(
    client: TestClient, app_settings: Settings, redis_client: redis.Redis
) -> None:
    mine = auth(app_settings)
    other_world = add_site(sessions_for(app_settings), "Harbour watch", external_id="u-7")
    other = {"Authorization": f"Bearer {other_world.site_key}.{other_world.secret}"}
    clip_id = client.post(
        "/api/whale/clips?name=bay.flac", content=flac_bytes(4.0), headers=mine
    ).json()["clip_id"]
    analyse(app_settings, clip_id)
    queued = redis_client.xlen(keys.jobs_stream("whale"))

    # another site: the clip looks exactly like one that does not exist, and is not listed
    theirs = client.get(f"/api/whale/clips/{clip_id}", headers=other)
    missing = client.get("/api/whale/clips/424242", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"error": "not_found", "detail": f"audio clip {clip_id} does not exist"}
    assert missing.json()["detail"] == "audio clip 424242 does not exist"
    assert client.get("/api/whale/clips", headers=other).json() == {"clips": []}
    assert redis_client.xlen(keys.jobs_stream("whale")) == queued  # nothing queued for it

    # the owner lists and reads it; the other site's own upload stays apart
    other_id = client.post(
        "/api/whale/clips?name=pier.flac", content=flac_bytes(2.0), headers=other
    ).json()["clip_id"]
    listed = client.get("/api/whale/clips", headers=mine).json()["clips"]
    assert [(c["clip_id"], c["name"], c["status"]) for c in listed] == [
        (clip_id, "bay.flac", "done")
    ]
    assert listed[0]["n_detections"] == 1
    assert client.get(f"/api/whale/clips/{clip_id}", headers=mine).json()["status"] == "done"
    assert client.get(f"/api/whale/clips/{other_id}", headers=mine).status_code == 404
    their_list = client.get("/api/whale/clips", headers=other).json()["clips"]
    assert [(c["clip_id"], c["status"], c["n_detections"]) for c in their_list] == [
        (other_id, "pending", None)
    ]
    assert client.get("/api/whale/clips").status_code == 401

    # analysts see both sites' clips, with the owner, and can filter by site
    log_in(client)
    page = client.get("/whale").text
    assert "bay.flac" in page and "pier.flac" in page
    assert "Shop" in page and "Harbour watch" in page
    only = client.get(f"/whale?site={other_world.site_id}").text
    assert "pier.flac" in only and "bay.flac" not in only
    clip_page = client.get(f"/whale/clips/{clip_id}").text
    assert '<dd id="site">Shop</dd>' in clip_page
