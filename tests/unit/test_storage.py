from __future__ import annotations

import os
import threading

import pytest

from llie.batch import storage
from tests.conftest import FAKE_SECRET


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_list_images_local_filters_sorts_and_recurses(tmp_path):
    root = tmp_path / "in"
    for rel in [
        "b.JPG",
        "a/c.png",
        "a/b/d.jpeg",
        "z.Tif",
        "notes.txt",
        "noext",
        ".hidden.jpg",
        ".cache/e.jpg",
        "a/.f.png",
        "a/readme.md",
    ]:
        _touch(root / rel)
    assert storage.list_images(str(root)) == ["a/b/d.jpeg", "a/c.png", "b.JPG", "z.Tif"]
    # Same answer through a file:// URL and with a trailing slash.
    assert storage.list_images(f"file://{root}/") == ["a/b/d.jpeg", "a/c.png", "b.JPG", "z.Tif"]


def test_list_images_symlinks_stay_inside_root(tmp_path):
    root = tmp_path / "in"
    outside = tmp_path / "outside"
    _touch(root / "real/a.png")
    _touch(outside / "secret.png")
    _touch(outside / "dir/x.png")
    os.symlink(outside / "secret.png", root / "leak.png")
    os.symlink(outside / "dir", root / "leakdir")
    os.symlink(root / "real/a.png", root / "alias.png")  # inside: kept under its own name
    os.symlink(root / "real", root / "real/loop")  # a cycle must not hang the walk
    os.symlink(tmp_path / "missing.png", root / "dangling.png")
    assert storage.list_images(str(root)) == ["alias.png", "real/a.png"]


def test_list_images_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.list_images(str(tmp_path / "nope"))


@pytest.mark.parametrize("rel", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "", "a/..", "s3://b/k", "C:\\x.jpg"])
def test_join_refuses_escaping_paths(rel):
    with pytest.raises(ValueError):
        storage.join("s3://bucket/root", rel)


def test_join_builds_urls():
    assert storage.join("s3://bucket/root/", "a/b.jpg") == "s3://bucket/root/a/b.jpg"
    assert storage.join("/data/in", "./a//b.jpg") == "/data/in/a/b.jpg"


@pytest.mark.parametrize(
    "inp,out,ok",
    [
        ("/data/in", "/data/out", True),
        ("/data/in", "/data/in", False),
        ("/data/in", "/data/in/", False),
        ("/data/in", "/data/in/out", False),
        ("/data/in", "/data/x/../in/out", False),
        ("/data/in/sub", "/data", False),
        ("/data/in", "/data/input", True),
        ("s3://b/in", "s3://b/in/out", False),
        ("s3://b/in", "s3://b/inx", True),
        ("s3://b/in", "/b/in/out", True),
        ("s3://b/in/", "s3://b/in", False),
    ],
)
def test_check_output_not_inside_input(inp, out, ok):
    if ok:
        storage.check_output_not_inside_input(inp, out)
    else:
        with pytest.raises(ValueError):
            storage.check_output_not_inside_input(inp, out)


def test_check_output_follows_symlinks(tmp_path):
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "link")
    with pytest.raises(ValueError):
        storage.check_output_not_inside_input(str(tmp_path / "in"), str(tmp_path / "link" / "out"))


def test_write_bytes_atomic_local(tmp_path):
    target = tmp_path / "deep" / "dir" / "f.bin"
    storage.write_bytes_atomic(str(target), b"one")
    assert target.read_bytes() == b"one"
    storage.write_bytes_atomic(str(target), b"two")  # overwrite in place
    assert target.read_bytes() == b"two"
    assert storage.read_bytes(str(target)) == b"two"
    assert storage.exists(str(target)) and not storage.exists(str(tmp_path / "nope"))
    assert sorted(os.listdir(target.parent)) == ["f.bin"]  # no temp files left behind
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_write_bytes_atomic_never_shows_partial_file(tmp_path):
    target = tmp_path / "f.bin"
    size = 4_000_000
    versions = {b"a" * size, b"b" * size}
    storage.write_bytes_atomic(str(target), b"a" * size)
    bad = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            data = target.read_bytes()
            if data not in versions:
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(10):
        storage.write_bytes_atomic(str(target), (b"b" if i % 2 == 0 else b"a") * size)
    stop.set()
    t.join()
    assert bad == []  # every read saw a whole old or a whole new file


def test_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    storage.write_bytes_atomic(str(target), b"old")
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(str(target), object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_remove(tmp_path):
    _touch(tmp_path / "f")
    storage.remove(str(tmp_path / "f"))
    storage.remove(str(tmp_path / "f"))  # already gone: fine
    assert not (tmp_path / "f").exists()


def test_list_files(tmp_path):
    _touch(tmp_path / "m" / "b.parquet")
    _touch(tmp_path / "m" / "a.parquet")
    _touch(tmp_path / "m" / "sub" / "c.parquet")
    assert storage.list_files(str(tmp_path / "m")) == ["a.parquet", "b.parquet"]
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_redact_url():
    assert storage.redact_url("s3://AKIA:secret@bucket/key") == "s3://***@bucket/key"
    assert storage.redact_url("see https://u:p@host/x?X-Amz-Signature=abc here") == "see https://***@host/x?*** here"
    assert storage.redact_url("/plain/path") == "/plain/path"
    err = storage.describe_error(FileNotFoundError("s3://k:s@b/x missing"))
    assert err == "FileNotFoundError: s3://***@b/x missing"


def test_s3_roundtrip(s3):
    root = s3.url("in")
    for rel in ["b.jpg", "a/c.PNG", "a/.hidden.png", ".git/x.jpg", "notes.txt"]:
        storage.write_bytes_atomic(storage.join(root, rel), b"data-" + rel.encode())
    assert storage.list_images(root) == ["a/c.PNG", "b.jpg"]
    assert storage.read_bytes(s3.url("in/b.jpg")) == b"data-b.jpg"
    assert storage.exists(s3.url("in/b.jpg")) and not storage.exists(s3.url("in/zzz.jpg"))
    storage.write_bytes_atomic(s3.url("in/b.jpg"), b"new")
    assert storage.read_bytes(s3.url("in/b.jpg")) == b"new"
    assert storage.list_files(s3.url("in")) == ["b.jpg", "notes.txt"]
    storage.remove(s3.url("in/notes.txt"))
    assert storage.list_files(s3.url("in")) == ["b.jpg"]
    with pytest.raises(FileNotFoundError):
        storage.list_images(s3.url("missing-prefix"))


def test_s3_errors_do_not_leak_credentials(s3):
    with pytest.raises(Exception) as info:
        storage.read_bytes(s3.url("in/missing.jpg"))
    assert FAKE_SECRET not in storage.describe_error(info.value)
    assert FAKE_SECRET not in repr(info.value)


@pytest.mark.parametrize(
    "url,expected",
    [
        # AWS secret keys routinely hold "/" and "+"; the userinfo runs to the last "@".
        ("s3://AKIAX:abc/Def+ghi@bucket/key", "s3://***@bucket/key"),
        ("s3://AKIAX:abc+def/ghi/jkl@bucket", "s3://***@bucket"),
        ("https://user:p@ss@host/x", "https://***@host/x"),
        ("https://user:a@b:c/d@host/x?sig=1", "https://***@host/x?***"),
        ("https://user@corp.example@host/x", "https://***@host/x"),
        ("error at s3://AKIAX:s/e+c@r/et@bucket/in/a.png: missing", "error at s3://***@bucket/in/a.png: missing"),
        # No credentials: an "@" in a file name stays, and so does a port.
        ("s3://bucket/icons/logo@2x.png", "s3://bucket/icons/logo@2x.png"),
        ("http://127.0.0.1:5000/bucket/key", "http://127.0.0.1:5000/bucket/key"),
    ],
)
def test_redact_url_secrets_with_slash_plus_at(url, expected):
    assert storage.redact_url(url) == expected


def test_url_secrets_pieces():
    secrets = storage.url_secrets("s3://AKIAX:abc/Def+ghi@bucket/in", None, "/local/out", "s3://plain/ref")
    assert secrets[0] == "AKIAX:abc/Def+ghi"  # longest first
    assert {"AKIAX", "abc/Def+ghi", "Def+ghi"} <= set(secrets)
    assert "abc" not in secrets  # too short to scrub on its own without garbling messages
    # Percent-encoded credentials also in the decoded form a library may quote.
    assert "p/ss@word" in storage.url_secrets("s3://user:p%2Fss%40word@bucket")
    assert storage.url_secrets("/plain/path", "s3://bucket/logo@2x.png", None) == ()


def test_describe_error_scrubs_credentials_quoted_without_a_scheme():
    secrets = storage.url_secrets("s3://AKIAEXAMPLE:wJalr/XUtn+FEMI@bucket/in")
    # botocore quotes what it took for the bucket name, without the scheme; a "/" in the secret
    # ends that bucket name early.
    for msg in [
        'Parameter validation failed:\nInvalid bucket name "AKIAEXAMPLE:wJalr/XUtn+FEMI@bucket": Bucket name must match',
        'Invalid bucket name "AKIAEXAMPLE:wJalr": Bucket name must match the regex',
        "key XUtn+FEMI@bucket/in/a.png and s3://AKIAEXAMPLE:wJalr/XUtn+FEMI@bucket/in/a.png",
    ]:
        err = storage.describe_error(ValueError(msg), secrets)
        assert err.startswith("ValueError: ")
        for leaked in ("AKIAEXAMPLE", "wJalr", "XUtn+FEMI"):
            assert leaked not in err, err
    assert storage.describe_error(ValueError('Invalid bucket name "KEY1:SECRET1@b"'), secrets=["KEY1:SECRET1"]) == (
        'ValueError: Invalid bucket name "***@b"'
    )
    # Without the secrets nothing URL-shaped is there to catch: why callers pass them.
    assert "SECRET1" in storage.describe_error(ValueError('Invalid bucket name "KEY1:SECRET1@b"'))


def test_scrub_replaces_longest_first():
    assert storage.scrub("x AKIAX:abc/Def+ghi@b y AKIAX z", ["AKIAX", "AKIAX:abc/Def+ghi"]) == "x ***@b y *** z"
    assert storage.scrub("see https://u:p@host/x") == "see https://***@host/x"


def test_list_local_images_names_the_links_it_does_not_follow(tmp_path, make_images):
    """`llie enhance` lists as `llie run` does, and says which image links lead out of its folder."""
    make_images(tmp_path / "in", ["a.png", "sub/b.png", ".hidden/c.png"])
    make_images(tmp_path / "elsewhere", ["secret.png"])
    (tmp_path / "in" / "out.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    (tmp_path / "in" / "again.png").symlink_to(tmp_path / "in" / "a.png")
    images, links_out = storage.list_local_images(str(tmp_path / "in"))
    assert images == ["a.png", "again.png", "sub/b.png"] == storage.list_images(str(tmp_path / "in"))
    assert links_out == ["out.png"]
