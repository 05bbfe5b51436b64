"""The training data reader on awkward inputs: huge declared sizes, sideways photos, stray folders."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from npshuffle.images import load_rgb, upright_size
from npshuffle.model_file import DEFAULT_RECIPES
from npshuffle.preprocess import preprocess_batch
from npshuffle.training.datasets import DatasetError, class_listing, list_dataset, load_image, seed_split


def png_declaring(path, width: int, height: int):
    """A 1 x 1 PNG whose header (IHDR, CRC fixed) declares ``width`` x ``height`` pixels."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# 50000 x 50000 is past PIL's hard limit; 9500 x 9500 only past its warning, which PIL would decode
@pytest.mark.parametrize("side", [50_000, 9_500])
def test_load_image_refuses_a_decompression_bomb_by_name(tmp_path, side):
    path = png_declaring(tmp_path / "bomb.png", side, side)
    with pytest.raises(DatasetError, match="too large") as error:
        load_image(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def sideways_photo(path):
    """A PNG stored 60 x 40 (left half blue, right half red) with EXIF orientation 6 (turn 90 degrees
    clockwise to view); returns the stored pixels."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (0, 0, 255)
    pixels[:, 30:] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return pixels


def test_load_image_turns_a_photo_upright_as_predict_does(tmp_path):
    path = tmp_path / "sideways.png"
    stored = sideways_photo(path)
    image = load_image(path)
    assert image.size == (40, 60)
    assert np.array_equal(np.asarray(image), np.rot90(stored, k=-1))  # blue on top, red below
    assert np.array_equal(np.asarray(image), np.asarray(load_rgb(path)))  # npshuffle predict's reading
    # npshuffle eval preprocesses load_image's photo: turned once, not twice, so it sees what predict sees
    recipe = dict(DEFAULT_RECIPES["torchvision"], resize=40, crop=32)
    assert np.array_equal(preprocess_batch([image], recipe), preprocess_batch([str(path)], recipe))


def open_files() -> list[str]:
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]


@pytest.mark.parametrize("read", [load_image, load_rgb, lambda p: load_rgb(p, keep_orientation=True),
                                  lambda p: load_rgb(p, fast_decode_for=4)],
                         ids=["training", "predict", "predict keeping the orientation", "fast decode"])
def test_a_multi_frame_photo_leaves_no_file_open_and_is_still_turned_upright(tmp_path, read):
    # an MPO, as some cameras write: PIL keeps such a file open after decoding, to seek to its frames
    path = tmp_path / "two_frames.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    Image.new("RGB", (20, 10), (255, 0, 0)).save(path, format="MPO", save_all=True, exif=exif.tobytes(),
                                                 append_images=[Image.new("RGB", (20, 10), (0, 255, 0))])
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to see open files")
    image = read(path)
    assert str(path) not in open_files()
    assert image.getpixel((0, 0))[0] > 200  # the first frame
    assert upright_size(image) == (10, 20)  # its EXIF orientation survived the copy


def make_classes(root, *names, images: int = 1):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(images):
            Image.new("RGB", (8, 8)).save(root / name / f"{i}.png")
    return root


def test_hidden_folders_are_not_classes(tmp_path):
    make_classes(tmp_path, "a", "b", ".git", ".ipynb_checkpoints", images=5)
    assert list(class_listing(tmp_path)) == ["a", "b"]
    assert seed_split(tmp_path).classes == ["a", "b"]


def test_a_class_folder_without_images_is_refused_by_name(tmp_path):
    make_classes(tmp_path, "a", "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("not a photo")
    for call in (class_listing, seed_split, list_dataset):
        with pytest.raises(DatasetError, match="holds no images") as error:
            call(tmp_path)
        assert str(tmp_path / "c") in str(error.value)


def test_one_class_is_refused_for_training_but_can_be_evaluated(tmp_path):
    make_classes(tmp_path, "a", ".hidden", images=5)
    with pytest.raises(DatasetError, match="at least 2"):
        seed_split(tmp_path)
    assert list_dataset(tmp_path, min_classes=1) == (["a"], [f"a/{i}.png" for i in range(5)])


def test_hidden_files_are_not_images(tmp_path):
    make_classes(tmp_path, "a", "b", images=2)
    (tmp_path / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")  # AppleDouble, not a photo
    assert list_dataset(tmp_path)[1] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]


@pytest.mark.parametrize("read", [list_dataset, seed_split, lambda root: list_dataset(root, every_image=True)])
def test_each_folder_is_listed_once(tmp_path, monkeypatch, read):
    # a class folder on a network drive or of 100,000 photos costs a listing each time it is read
    make_classes(tmp_path, "a", "b", "c", images=3)
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda folder: listed.append(os.path.basename(folder)) or real_listdir(folder))
    read(tmp_path)
    assert sorted(listed) == sorted([tmp_path.name, "a", "b", "c"])


def test_images_the_split_leaves_out_are_named(tmp_path):
    make_classes(tmp_path, "a", "b", images=2)
    for name in ("x.jpeg", "y.Jpg", "z.webp", "notes.txt", "._w.jpeg"):
        (tmp_path / "a" / name).write_bytes(b"")
    assert seed_split(tmp_path).left_out == ["a/x.jpeg", "a/y.Jpg", "a/z.webp"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_the_header_scan_names_what_cannot_be_read_without_opening_a_pipe(tmp_path):
    from npshuffle.training.datasets import read_headers

    make_classes(tmp_path, "a", "b", images=1)
    os.mkfifo(tmp_path / "a" / "pipe.png")  # opening it for reading would block until a writer came
    (tmp_path / "a" / "text.png").write_text("not a photo")
    sizes, unreadable = read_headers(tmp_path, ["a/0.png", "a/pipe.png", "a/text.png", "a/gone.png"])
    assert list(sizes) == ["a/0.png"] and sizes["a/0.png"] == Image.open(tmp_path / "a" / "0.png").size
    assert [path for path, _ in unreadable] == ["a/pipe.png", "a/text.png", "a/gone.png"]
    assert "not a regular file" in unreadable[0][1] and "not an image file" in unreadable[1][1]
    assert "no such file" in unreadable[2][1]
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    os.symlink(tmp_path / "a" / "gone.png", tmp_path / "a" / "link.png")
    assert read_headers(tmp_path, ["a/empty.png", "a/link.png"])[1] == [
        ("a/empty.png", "empty file (0 bytes)"),
        ("a/link.png", "a link to nothing (its target is gone, or the links loop)")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_the_header_scan_says_a_photo_it_may_not_read_is_refused_by_the_system(tmp_path):
    from npshuffle.training.datasets import read_headers

    make_classes(tmp_path, "a", "b", images=1)
    (tmp_path / "a" / "0.png").chmod(0)
    assert read_headers(tmp_path, ["a/0.png"])[1] == [("a/0.png", "cannot be opened (Permission denied)")]


def test_class_folders_without_images_are_counted_and_name_the_split_extensions(tmp_path):
    make_classes(tmp_path, "a", "b", "c", images=1)
    for cls in ("b", "c"):
        for f in (tmp_path / cls).iterdir():
            f.rename(f.with_suffix(".bmp"))
    with pytest.raises(DatasetError, match=r"b: class folder holds no .jpg/.JPG/.png/.PNG photos.*rename them"
                                           r".* \(and 1 more class folder\(s\) without photos a split takes\)"):
        seed_split(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "b" / "0.bmp").unlink()
    # b now holds no file at all: the plain message, which names the extensions a split takes, not every
    # extension npshuffle reads (a .bmp added would not help)
    with pytest.raises(DatasetError, match=r"b: class folder holds no images \(.jpg, .JPG, .png, .PNG\) "
                                           r"\(and 2 more class folder\(s\)"):
        seed_split(tmp_path)


def test_a_class_of_jpeg_files_only_says_why_the_split_leaves_them_out(tmp_path):
    make_classes(tmp_path, "a", "b", images=2)
    (tmp_path / "c").mkdir()
    for name in ("x.jpeg", "y.jpeg"):
        (tmp_path / "c" / name).write_bytes((tmp_path / "a" / "0.png").read_bytes())
    with pytest.raises(DatasetError, match=r"holds no .jpg/.JPG/.png/.PNG photos.*2 other image\(s\), e.g. c/x.jpeg"):
        seed_split(tmp_path)
    # evaluating every image of the folder takes them
    assert list_dataset(tmp_path, every_image=True)[1] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png",
                                                           "c/x.jpeg", "c/y.jpeg"]
