"""MouseScorer: which model judges which session, and the live-scoring API."""

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from renderer.errors import InvalidSession
from scoring.database import make_engine, make_sessionmaker
from scoring.mouse import store
from scoring.mouse.data import Preprocessing
from scoring.mouse.inference import AccountScorer, MouseScorer
from scoring.mouse.model import ModelConfig, build
from scoring.mouse.synth import draw_habits, generate_events
from scoring.mouse.train import Head, OwnerModel
from scoring.schema import Account, ModelVersion, Site

PREP = Preprocessing(size=32, window_events=300)


def events(n: int = 700) -> tuple[np.ndarray, tuple[int, int]]:
    rng = np.random.default_rng(n)
    return generate_events(draw_habits(rng), n, rng)


def test_no_model_scores_untrained_and_never_flags(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    scorer = MouseScorer(make_sessionmaker(engine), tmp_path)
    ev, vp = events()
    a = scorer.assess(ev, vp, "anyone")
    assert a.mode == "untrained" and not a.flagged and a.n_windows == 2
    risk, windows = scorer.score_events(ev, vp)
    assert 0 <= risk <= 1 and windows == 2
    with pytest.raises(InvalidSession) as e:
        scorer.score_events(np.array([[0.0, 5, 5, 0]]), vp)
    assert e.value.code == "too_few_events"
    engine.dispose()


def test_owner_model_judges_enrolled_accounts_only(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        site = Site(key=f"tgk_{uuid.uuid4().hex[:8]}", name="x", secret_hash="x")
        s.add(site)
        s.flush()
        s.add_all([Account(site_id=site.id, external_id=e) for e in ("alice", "zoe")])
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=2)).eval()
    heads = {"alice": Head(np.full(8, -1.0, dtype=np.float32), 0.0, threshold=-1e6)}
    model = OwnerModel(net, PREP, heads)
    with sessions() as s, s.begin():
        store.register(s, store.save(tmp_path, model, "v1"), model, "v1")
        ids = {a.external_id: a.id for a in s.query(Account)}
    scorer = MouseScorer(sessions, tmp_path)
    ev, vp = events()
    alice = scorer.assess(ev, vp, "alice")
    assert alice.mode == "owner" and alice.flagged and alice.version == "v1"
    assert alice.risk > 0.5
    stranger = scorer.assess(ev, vp, "zoe")
    assert stranger.mode == "not_enrolled" and not stranger.flagged
    bound = scorer.for_account(ids["alice"])
    assert bound.kind == "account" and bound.version == "v1"
    risk, windows, _rendered = bound.score_events(ev, vp)
    assert risk == pytest.approx(alice.risk) and windows == alice.n_windows
    assert scorer.for_account(ids["zoe"]).kind == "none"
    assert scorer.for_account(None).kind == "none"
    engine.dispose()


def test_one_session_runs_only_the_network_its_mode_needs(sqlite_url: str, tmp_path: Path) -> None:
    # A live decision scores one session: it must not pay for both networks, and the answer
    # must equal what the worker's both-networks batch gives for the same session.
    from scoring.mouse.train import GroupModel

    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    owner_net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=2)).eval()
    heads = {"alice": Head(np.linspace(-1, 1, 8).astype(np.float32), 0.1, threshold=0.0)}
    group_net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1)).eval()
    with sessions() as s, s.begin():
        owner = OwnerModel(owner_net, PREP, heads)
        store.register(s, store.save(tmp_path, owner, "o1"), owner, "o1")
        group = GroupModel(group_net, PREP, threshold=0.2)
        store.register(s, store.save(tmp_path, group, "g1"), group, "g1")
    scorer = MouseScorer(sessions, tmp_path)
    ev, vp = events()
    from renderer.mouse import sanitize

    images = scorer.images(sanitize(ev, vp), "group")  # same windows for both: same prep
    both = scorer.forward(images)
    owner_only = scorer.forward(images, "owner")
    group_only = scorer.forward(images, "group")
    assert owner_only.shape == both.shape and bool(owner_only[:, -1].isnan().all())
    assert group_only.shape == (len(images), 1)
    for account, mode in (("alice", "owner"), ("bob", "group")):
        live = scorer.assess(ev, vp, account)
        batch = scorer.summarise(account, both)
        assert live.mode == batch.mode == mode
        assert live.score == pytest.approx(batch.score, abs=1e-5)
    engine.dispose()


def test_each_network_scores_its_own_windows(sqlite_url: str, tmp_path: Path) -> None:
    # the group model's windows are twice the owner model's: a worker batch mixing both modes,
    # a single assessment and the live path all give each session its own network's windows
    from renderer.mouse import sanitize
    from scoring.mouse.train import GroupModel

    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    owner_net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=2)).eval()
    heads = {"alice": Head(np.linspace(-1, 1, 8).astype(np.float32), 0.1, threshold=0.0)}
    group_net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1)).eval()
    long = Preprocessing(size=32, window_events=600)
    with sessions() as s, s.begin():
        owner = OwnerModel(owner_net, PREP, heads)
        store.register(s, store.save(tmp_path, owner, "o1"), owner, "o1")
        group = GroupModel(group_net, long, threshold=0.2)
        store.register(s, store.save(tmp_path, group, "g1"), group, "g1")
    scorer = MouseScorer(sessions, tmp_path)
    assert scorer.prep_for("owner") == PREP and scorer.prep_for("group") == long
    ev, vp = events(1800)  # whole windows of both lengths: batch and live cut the same ones
    clean = sanitize(ev, vp)
    per_item = [scorer.images(clean, "owner"), scorer.images(clean, "group")]
    assert [len(x) for x in per_item] == [6, 3]
    outputs = torch.split(scorer.forward(torch.cat(per_item)), [6, 3])  # one worker batch
    for account, mode, out, windows in (
        ("alice", "owner", outputs[0], 6),
        ("bob", "group", outputs[1], 3),
    ):
        batch = scorer.summarise(account, out)
        single = scorer.assess(ev, vp, account)
        live = scorer.score_live(ev, vp, account)
        assert batch.mode == single.mode == mode
        assert batch.n_windows == single.n_windows == live.windows == windows
        assert batch.score == pytest.approx(single.score, abs=1e-5)
        assert live.risk == pytest.approx(single.risk, abs=1e-6)
    # the pre-scorer completes each mode's windows at its own length
    scorer.load()  # an empty window cache
    part = clean.events[:1300]
    assert scorer.prescore_live(part, vp, "alice") == (3, 0)  # 0-300-600-900 | 900-1300
    assert scorer.prescore_live(part, vp, "bob") == (1, 0)  # 0-600 | 600-1300
    bound = {a: AccountScorer(scorer, a, "x", None) for a in ("alice", "bob")}
    assert (bound["alice"].window_events, bound["bob"].window_events) == (300, 600)
    engine.dispose()


def _two_sites_with_alice(sessions) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
    """Sites a and b, each with its own account whose external id is "alice"."""
    keys, site_ids, alice = {}, {}, {}
    with sessions() as s, s.begin():
        for name in ("a", "b"):
            site = Site(key=f"tgk_{uuid.uuid4().hex[:8]}", name=name, secret_hash="x")
            s.add(site)
            s.flush()
            acct = Account(site_id=site.id, external_id="alice")
            s.add(acct)
            s.flush()
            keys[name], site_ids[name], alice[name] = site.key, site.id, acct.id
    return keys, site_ids, alice


def _owner(heads: dict[str, Head]) -> OwnerModel:
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=2)).eval()
    return OwnerModel(net, PREP, heads)


def _head(threshold: float) -> Head:
    return Head(np.linspace(-1, 1, 8).astype(np.float32), 0.0, threshold=threshold)


def test_the_same_external_id_on_two_sites_never_shares_a_head(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    keys, site_ids, alice = _two_sites_with_alice(sessions)
    # one site-qualified head: site a's alice is enrolled, site b's is not
    model = _owner({store.account_key(keys["a"], "alice"): _head(1.0)})
    with sessions() as s, s.begin():
        store.register(s, store.save(tmp_path, model, "v1"), model, "v1")
    scorer = MouseScorer(sessions, tmp_path)
    assert scorer.for_account(alice["a"]).kind == "account"
    assert scorer.for_account(alice["b"]).kind == "none"
    assert scorer.mode_for(scorer.site_head_key(site_ids["b"], "alice")) == "not_enrolled"
    assert scorer.mode_for(scorer.site_head_key(site_ids["a"], "alice")) == "owner"
    # two heads: each account is judged by its own, with its own calibrated threshold
    model = _owner(
        {store.account_key(keys[n], "alice"): _head(t) for n, t in (("a", 1.0), ("b", 2.0))}
    )
    with sessions() as s, s.begin():
        store.register(s, store.save(tmp_path, model, "v2"), model, "v2")
        rows = s.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
        per_account = {r.account_id: r.threshold for r in rows if r.account_id is not None}
    assert per_account == {alice["a"]: 1.0, alice["b"]: 2.0}
    scorer.load()
    ev, vp = events()
    a, b = (scorer.for_account(alice[n]) for n in ("a", "b"))
    assert a.kind == b.kind == "account" and a.account != b.account
    assert scorer.assess(ev, vp, a.account).threshold == 1.0
    assert scorer.assess(ev, vp, b.account).threshold == 2.0
    engine.dispose()


def test_bare_head_keys_are_bound_to_one_site_at_registration(
    sqlite_url: str, tmp_path: Path
) -> None:
    # a session file's user_ids are a site's external ids (trailguard sessions export)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    keys, _site_ids, alice = _two_sites_with_alice(sessions)
    model = _owner({"alice": _head(1.0)})
    with sessions() as s, s.begin():  # ambiguous: both sites have an "alice"
        store.register(s, store.save(tmp_path, model, "v1"), model, "v1")
    scorer = MouseScorer(sessions, tmp_path)
    assert {scorer.for_account(alice[n]).kind for n in ("a", "b")} == {"none"}
    with sessions() as s, s.begin():  # trailguard mouse train --register --site KEY
        store.register(s, store.save(tmp_path, model, "v2"), model, "v2", site_key=keys["b"])
    scorer.load()
    assert scorer.for_account(alice["b"]).kind == "account"
    assert scorer.for_account(alice["a"]).kind == "none"
    engine.dispose()


def test_window_views_are_scored_alike_in_batch_live_and_prescore(
    sqlite_url: str, tmp_path: Path
) -> None:
    # a group model scoring its windows and the windows half-way between them (stride W/2):
    # the batch path, a live decision and the pre-scorer all use the checkpoint's views
    from renderer.mouse import sanitize
    from scoring.mouse.train import GroupModel

    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1)).eval()
    views = Preprocessing(size=32, window_events=600, window_views=2)
    with sessions() as s, s.begin():
        group = GroupModel(net, views, threshold=0.2)
        store.register(s, store.save(tmp_path, group, "g1"), group, "g1")
    scorer = MouseScorer(sessions, tmp_path)
    assert scorer.prep_for("group").window_views == 2
    ev, vp = events(1800)  # whole windows: batch and live cut the same five
    clean = sanitize(ev, vp)
    assert len(scorer.images(clean, "group")) == 5  # 0-600, 300-900, …, 1200-1800
    single = scorer.assess(ev, vp, "bob")
    live = scorer.score_live(ev, vp, "bob")
    assert single.n_windows == live.windows == 5
    assert live.risk == pytest.approx(single.risk, abs=1e-6)
    scorer.load()  # an empty window cache
    part = clean.events[:1300]  # blocks 0-600 | 600-1300 (growing), shifted 300-900
    assert scorer.prescore_live(part, vp, "bob") == (2, 0)
    assert scorer.score_live(part, vp, "bob").rendered == 1  # only the growing block
    engine.dispose()
