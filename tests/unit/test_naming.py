import pytest

from cgsnap import naming

INST = "6695eb01-f6a4-8304-79aa-97f2502e193f"
SET = "0c1f9a2e-1111-2222-3333-444455556666"


def test_member_name_round_trip():
    name = naming.member_name(INST, SET, naming.ROLE_VOLUME, "vdb")
    assert name == "cgsnap-6695eb01-0c1f9a2e-vol-vdb"
    assert naming.parse_member_name(name) == ("6695eb01", "0c1f9a2e", "volume", "vdb")
    root = naming.member_name(INST, SET, naming.ROLE_ROOT, "vda")
    assert naming.parse_member_name(root).role == "root"


def test_member_name_is_deterministic_and_bounded():
    a = naming.member_name(INST, SET, "volume", "vdaa")
    assert a == naming.member_name(INST, SET, "volume", "vdaa")
    assert len(naming.member_name(INST, SET, "volume", "x" * 500)) <= naming.MAX_NAME_LEN


@pytest.mark.parametrize("bad", ["", "my-volume", "cgsnap-xyz", "cgsnap-6695eb01-0c1f9a2e-foo-vdb",
                                 "cgsnap-6695eb01-0c1f9a2e-vol-VDB", None])
def test_parse_rejects_foreign_names(bad):
    assert naming.parse_member_name(bad) is None


def test_device_is_sanitised():
    assert naming.member_name(INST, SET, "volume", "../sd b;rm") == \
        "cgsnap-6695eb01-0c1f9a2e-vol-sdbrm"
    with pytest.raises(ValueError):
        naming.member_name(INST, SET, "volume", "///")


@pytest.mark.parametrize("raw,expected", [
    ("nightly", "nightly"),
    ("  two   words ", "two words"),
    ("tab\there\nnewline", "tab here newline"),
    ("bell\x07\x1b[31mred", "bell[31mred"),
    ("ünïcødé ✓ 快照", "ünïcødé ✓ 快照"),
    ("$(rm -rf /); `x` | y", "$(rm -rf /); `x` | y"),
    ("\x00\x01", None),
])
def test_set_name_sanitised(raw, expected):
    assert naming.sanitize_set_name(raw) == expected


def test_set_name_length_capped():
    assert len(naming.sanitize_set_name("n" * 1000)) == naming.MAX_SET_NAME_LEN


def test_metadata_links_back_to_the_set():
    meta = naming.member_metadata(SET, INST, "root", "vda", 1, "x" * 400)
    assert meta[naming.META_SET_ID] == SET
    assert meta[naming.META_INSTANCE_ID] == INST
    assert meta[naming.META_ROLE] == "root"
    assert meta[naming.META_SCHEMA_VERSION] == "1"
    assert all(isinstance(v, str) and len(v) <= 255 for v in meta.values())


def test_idempotency_key_gives_a_stable_set_id():
    assert naming.new_set_id(INST, "k1") == naming.new_set_id(INST, "k1")
    assert naming.new_set_id(INST, "k1") != naming.new_set_id(INST, "k2")
    assert naming.new_set_id() != naming.new_set_id()
