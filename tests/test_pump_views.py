"""The pump review pages: login required, diagnoses per well and card, the card image."""

from __future__ import annotations

import numpy as np
from starlette.testclient import TestClient
from test_review_support import log_in, sessions_for

from scoring.pump import synth
from scoring.schema import PumpCard, PumpDiagnosis
from server.settings import Settings
from server.sites import create_site


def _add(settings: Settings) -> tuple[int, int]:
    rng = np.random.default_rng(2)
    with sessions_for(settings)() as session, session.begin():
        east, west = (create_site(session, name, []).site for name in ("East field", "West"))
        session.flush()
        pks = []
        for site, well, card_id, mode in (
            (east, "W-1", "c-<1>", "rod_part"),
            (west, "W-2", "c-2", "gas_lock"),
        ):
            card = synth.synth_card(rng, mode, card_id=card_id)
            row = PumpCard(
                site_id=site.id,
                well_id=well,
                card_id=card_id,
                n_points=card.n_points,
                points=card.points(),
            )
            session.add(row)
            session.flush()
            pks.append(row.id)
        session.add(
            PumpDiagnosis(
                job_id="pump:view-1",
                card_pk=pks[0],
                mode="rod_part",
                confidence=0.914,
                probabilities={"rod_part": 0.914, "gas_lock": 0.086},
                untrained=False,
            )
        )
    return pks[0], pks[1]


def test_pages_need_an_analyst(client: TestClient, app_settings: Settings) -> None:
    done, _ = _add(app_settings)
    for path in ("/pump", f"/pump/cards/{done}", f"/pump/cards/{done}.png"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_list_card_and_image(client: TestClient, app_settings: Settings) -> None:
    done, pending = _add(app_settings)
    log_in(client)
    page = client.get("/pump")
    assert page.status_code == 200
    assert "c-&lt;1&gt;" in page.text and "<1>" not in page.text  # escaped
    assert "rod_part" in page.text and "91.4 %" in page.text and "pending" in page.text
    assert "East field" in page.text and "West" in page.text  # analysts see every site
    assert 'href="/pump">Pump cards' in page.text  # the shared layout's navigation
    only = client.get("/pump?well=W-2")
    assert "c-2" in only.text and "c-&lt;1&gt;" not in only.text
    with sessions_for(app_settings)() as session:
        east = session.get(PumpCard, done)
        assert east is not None
        east_id = east.site_id
    by_site = client.get(f"/pump?site={east_id}")
    assert "c-&lt;1&gt;" in by_site.text and "c-2" not in by_site.text

    card = client.get(f"/pump/cards/{done}")
    assert card.status_code == 200
    assert f'src="/pump/cards/{done}.png"' in card.text
    assert 'id="mode">rod_part' in card.text and "91.4 %" in card.text
    assert client.get(f"/pump/cards/{pending}").text.count("pending") >= 1

    image = client.get(f"/pump/cards/{done}.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert client.get("/pump/cards/99999").status_code == 404
    assert client.get("/pump/cards/abc.png").status_code == 404
