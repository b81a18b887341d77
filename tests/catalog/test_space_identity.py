"""D1 (issue 14): the encoder options that change the vectors are the space's identity.

A run made with another seed, band list, patch size, bias, scaling, chip size or checkpoint
is refused by a collection of another space, with a message naming what differs; the
canonical options and their hash are recorded for the space and shown in the metadata.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.cli import main
from embcat.encoders.manifest import Manifest

BASE: dict[str, Any] = {
    "num_features": 4,
    "patch_size": 3,
    "seed": 0,
    "bias": 0.01,
    "bands": ["B04", "B03", "B02"],
    "scaling": {"type": "scale", "value": 10000.0},
    "dtype": "float32",
    "gsd": 10.0,
}


def _name() -> str:
    return "s" + uuid.uuid4().hex[:10]


def _run(tmp_path: Path, encoder: str, prefix: str, chip_size: int = 64, **changes: Any) -> Path:
    options = {**BASE, **changes}
    return write_run(
        tmp_path / f"{prefix}-{uuid.uuid4().hex[:6]}", 20, dims=8, seed=len(prefix),
        encoder=encoder, id_prefix=prefix, options=options, chip_size=chip_size,
    )  # fmt: skip


def _space_of(url: str, cid: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as c:
        row = c.execute(
            "select s.id, s.options_sha256, s.options from collections c"
            " join embedding_spaces s on s.id = c.space_id where c.id = %s",
            (cid,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _count(url: str, cid: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute("select count(*) from embeddings where collection_id = %s", (cid,))
        return int(row.fetchone()[0])  # type: ignore[index]


def test_run_with_another_seed_is_refused_naming_the_seed(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    other = _run(tmp_path, enc, "b", seed=1)
    with pytest.raises(Conflict, match=r"encoder options differ.*options\.seed: 0 vs 1"):
        publish(other, collection_id=cid, mode="upsert", settings=db_settings, progress=False)
    assert _count(db_settings.database_url, cid) == 20


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"bands": ["B02", "B03", "B04"]}, "bands"),
        ({"patch_size": 5}, "options.patch_size"),
        ({"bias": 0.1}, "options.bias"),
        ({"scaling": {"type": "scale", "value": 1.0}}, "scaling"),
        ({"chip_size": 32}, "chip_size"),
        ({"sha256": "ab" * 32}, "options.sha256"),
    ],
    ids=["bands", "patch_size", "bias", "scaling", "chip_size", "checkpoint"],
)
def test_every_option_that_changes_the_vectors_is_checked(
    tmp_path: Path, db_settings: DatabaseSettings, changes: dict[str, Any], named: str
) -> None:
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    chip = changes.pop("chip_size", 64)
    other = _run(tmp_path, enc, "b", chip_size=chip, **changes)
    with pytest.raises(Conflict, match=rf"encoder options differ.*{named}: "):
        publish(other, collection_id=cid, settings=db_settings, progress=False)
    assert _count(db_settings.database_url, cid) == 20


def test_run_with_the_same_options_joins_the_space(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """Precision and the declared source pixel size change no vector: the same space."""
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    space = _space_of(db_settings.database_url, cid)
    res = publish(
        _run(tmp_path, enc, "b", dtype="float16", gsd=20.0),
        collection_id=cid,
        settings=db_settings,
        progress=False,
    )
    assert res.inserted == 20
    assert _space_of(db_settings.database_url, cid) == space


def test_a_new_collection_with_other_options_is_another_space(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, c1, c2 = _name(), _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=c1, settings=db_settings, progress=False)
    publish(
        _run(tmp_path, enc, "b", seed=1), collection_id=c2, settings=db_settings, progress=False
    )
    s1, s2 = _space_of(db_settings.database_url, c1), _space_of(db_settings.database_url, c2)
    assert s1[0] != s2[0]
    assert (s1[2]["options"]["seed"], s2[2]["options"]["seed"]) == (0, 1)


def test_the_options_hash_is_shown_in_manifest_collection_and_sql(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, cid = _name(), _name()
    run = _run(tmp_path, enc, "a")
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    manifest = Manifest.load(run)
    sha = manifest.encoder.space_sha256
    assert sha is not None and len(sha) == 64
    with psycopg.connect(db_settings.database_url) as c:
        stac = c.execute("select stac from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
        view = c.execute(
            "select options_sha256, options from embcat.spaces where %s = any(collections)",
            (cid,),
        ).fetchone()
    assert stac["embcat:space"]["options_sha256"] == sha
    assert stac["embcat:space"]["options"] == manifest.encoder.space_options
    assert view == (sha, manifest.encoder.space_options)


def test_an_edited_manifest_hash_is_refused(tmp_path: Path, db_settings: DatabaseSettings) -> None:
    run = _run(tmp_path, _name(), "a")
    data = json.loads((run / "manifest.json").read_text())
    data["encoder"]["space_options"]["options"]["seed"] = 7  # hash left as it was
    (run / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match="space_sha256"):
        publish(run, collection_id=_name(), settings=db_settings, progress=False)


def _make_legacy(url: str, cid: str, hyperparameters: dict[str, Any] | None) -> None:
    """What a space registered before migration 0009 looks like: no options recorded, its
    MLM hyperparameters (as publishes before 0009 stored them) or nothing."""
    with psycopg.connect(url) as c:
        c.execute(
            "update embedding_spaces s set options = null, options_sha256 = null,"
            " mlm = case when %s::jsonb is null then '{}'::jsonb"
            " else jsonb_build_object('mlm:hyperparameters', %s::jsonb) end"
            " from collections c where c.space_id = s.id and c.id = %s",
            (
                Jsonb(hyperparameters) if hyperparameters is not None else None,
                Jsonb(hyperparameters) if hyperparameters is not None else None,
                cid,
            ),
        )


def test_space_from_before_the_options_refuses_a_run_that_differs(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    _make_legacy(db_settings.database_url, cid, {**BASE, "chip_size": 256})
    other = _run(tmp_path, enc, "b", seed=1)
    with pytest.raises(Conflict, match=r"recorded.*options\.seed: 0 vs 1"):
        publish(other, collection_id=cid, settings=db_settings, progress=False)
    assert _space_of(db_settings.database_url, cid)[1] is None


def test_space_from_before_the_options_adopts_a_run_that_matches(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """The mlm hyperparameters' chip_size is the encoder's default; the collection's chip
    layout holds the run's, and that is what is compared."""
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    _make_legacy(db_settings.database_url, cid, {**BASE, "chip_size": 256})
    run = _run(tmp_path, enc, "b")
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    sid, sha, _ = _space_of(db_settings.database_url, cid)
    assert sha == Manifest.load(run).encoder.space_sha256
    # from now on the space is checked by its hash
    with pytest.raises(Conflict, match=r"options\.seed: 0 vs 2"):
        publish(_run(tmp_path, enc, "c", seed=2), collection_id=cid, settings=db_settings,
                progress=False)  # fmt: skip


def test_space_that_recorded_nothing_adopts_the_first_run(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    _make_legacy(db_settings.database_url, cid, None)
    run = _run(tmp_path, enc, "b", seed=3)
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert _space_of(db_settings.database_url, cid)[1] == Manifest.load(run).encoder.space_sha256


def test_cli_names_the_difference_in_one_line(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    enc, cid = _name(), _name()
    publish(_run(tmp_path, enc, "a"), collection_id=cid, settings=db_settings, progress=False)
    other = _run(tmp_path, enc, "b", seed=1)
    out = CliRunner().invoke(
        main, ["publish", str(other), "--collection", cid, "--mode", "upsert", "--no-progress"]
    )
    assert out.exit_code != 0
    assert "options.seed: 0 vs 1" in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1
