"""segkit.data.rle: round trips, agreement with the usual numpy codec, SIIM relative form, errors, TGS data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segkit.data import rle
from segkit.errors import DataError

TGS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tgs-salt"


# --- independent references ---


def ref_runs(mask: np.ndarray, order: str = "F") -> list[tuple[int, int]]:
    """(1-based start, length) of each run, by the padded-diff method most kernels use."""
    pixels = np.asarray(mask != 0, np.int8).ravel(order=order)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], pixels, [0]]))) + 1
    return [(int(s), int(e - s)) for s, e in zip(edges[0::2], edges[1::2])]


def ref_encode(mask: np.ndarray, order: str = "F", relative: bool = False) -> str:
    runs = ref_runs(mask, order)
    if relative:
        out, prev_end = [], 0  # 0-based end of the previous run
        for start, length in runs:
            out += [start - 1 - prev_end, length]
            prev_end = start - 1 + length
        return " ".join(map(str, out))
    return " ".join(f"{s} {n}" for s, n in runs)


def siim_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """SIIM-ACR's sample decoder logic: a cursor moved on by each offset, then each length (column-major)."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    numbers = [int(x) for x in text.split()]
    cursor = 0
    for offset, length in zip(numbers[0::2], numbers[1::2]):
        cursor += offset
        flat[cursor:cursor + length] = 1
        cursor += length
    return flat.reshape(shape[1], shape[0]).T


masks = hnp.arrays(
    dtype=np.uint8,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    elements=st.integers(0, 1),
)


# --- round trips and agreement ---


@settings(max_examples=200, deadline=None)
@given(mask=masks, order=st.sampled_from("FC"), relative=st.booleans())
def test_round_trip_matches_reference(mask, order, relative):
    text = rle.encode(mask, order, relative)
    assert text == ref_encode(mask, order, relative)
    out = rle.decode(text, mask.shape, order, relative)
    assert out.dtype == np.uint8 and out.shape == mask.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, mask)
    assert rle.validate(text, mask.shape, relative=relative) == int(mask.sum())


@settings(max_examples=100, deadline=None)
@given(mask=masks, density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_relative_matches_siim_sample_decoder(mask, density, seed):
    mask = (np.random.default_rng(seed).random(mask.shape) < density).astype(np.uint8)
    text = rle.encode(mask, relative=True)
    np.testing.assert_array_equal(siim_decode(text, mask.shape), mask)


def test_siim_relative_convention_by_hand():
    # column-major 1-based pixels 11..13 and 21..22 of a 10x3 mask: first start 0-based (10), then the gap (7)
    mask = np.zeros((10, 3), np.uint8)
    mask[0:3, 1] = 1
    mask[0:2, 2] = 1
    assert rle.encode(mask) == "11 3 21 2"
    assert rle.encode(mask, relative=True) == "10 3 7 2"
    np.testing.assert_array_equal(rle.decode("10 3 7 2", (10, 3), relative=True), mask)
    assert rle.encode(np.ones((2, 2)), relative=True) == "0 4"


def test_kaggle_numbering_by_hand():
    mask = np.zeros((3, 4), np.uint8)
    mask[2, 0] = 1  # column-major pixel 3
    mask[0, 1] = 1  # pixel 4: touches the first, so one run of 2
    mask[1, 3] = 1  # pixel 11
    assert rle.encode(mask) == "3 2 11 1"
    assert rle.encode(mask, order="C") == "2 1 8 2"  # row-major: (0,1) is 2, (1,3) is 8, (2,0) is 9


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (1, 64), (64, 1), (5, 8), (13, 29)])
@pytest.mark.parametrize("order", ["F", "C"])
def test_empty_full_single_pixel(shape, order):
    h, w = shape
    empty = np.zeros(shape, np.uint8)
    assert rle.encode(empty, order) == ""
    assert rle.encode(empty, order, relative=True) == ""
    assert rle.encode(np.ones(shape, bool), order) == f"1 {h * w}"
    for i, j in [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]:
        one = empty.copy()
        one[i, j] = 1
        index = j * h + i if order == "F" else i * w + j
        assert rle.encode(one, order) == f"{index + 1} 1"
        assert rle.encode(one, order, relative=True) == f"{index} 1"
        np.testing.assert_array_equal(rle.decode(f"{index + 1} 1", shape, order), one)


def _layouts(mask: np.ndarray):
    """The same mask in every dtype and memory layout encode must accept."""
    h, w = mask.shape
    yield "uint8", mask
    yield "bool", mask.astype(bool)
    yield "int8 -1", mask.astype(np.int8) * -1
    yield "int32 255", mask.astype(np.int32) * 255
    yield "int64 labels", mask.astype(np.int64) * np.arange(1, w + 1)
    yield "float", mask.astype(np.float32) * 0.5
    yield "fortran", np.asfortranarray(mask)
    yield "transposed view", np.ascontiguousarray(mask.T).T
    yield "strided crop", np.pad(mask, 3)[3:-3, 3:-3]
    yield "every other column", np.repeat(mask, 2, axis=1)[:, ::2]
    yield "negative strides", mask[::-1, ::-1].copy()[::-1, ::-1]
    unaligned = np.zeros(h * w + 1, np.uint8)[1:].reshape(h, w)  # C-contiguous at an odd address
    unaligned[:] = mask
    yield "unaligned", unaligned
    unaligned_f = np.zeros(h * w + 1, np.uint8)[1:].reshape(w, h).T
    unaligned_f[:] = mask
    yield "unaligned fortran", unaligned_f


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (16, 16), (23, 37), (200, 200)])
def test_any_dtype_and_layout(shape):
    mask = (np.random.default_rng(sum(shape)).random(shape) < 0.4).astype(np.uint8)
    for order in "FC":
        want = ref_encode(mask, order)
        for name, variant in _layouts(mask):
            assert rle.encode(variant, order) == want, (name, order)


def test_many_runs_grow_buffers():
    # 200x200 noise has ~10k runs: past the kernels' first buffer size, in both scan orders and both layouts
    mask = (np.random.default_rng(7).random((200, 203)) < 0.5).astype(np.uint8)
    for order in "FC":
        for variant in (mask, np.asfortranarray(mask)):
            text = rle.encode(variant, order)
            assert text == ref_encode(mask, order)
            assert len(text.split()) > 10_000
            np.testing.assert_array_equal(rle.decode(text, mask.shape, order), mask)


def test_large_mask_with_wrapping_runs():
    mask = np.zeros((1000, 300), np.uint8)
    mask[900:, 10] = 1
    mask[:50, 11] = 1  # one run wrapping from column 10 into column 11
    mask[:, 20:25] = 1  # several full columns: one run
    text = rle.encode(mask)
    assert text == f"{10 * 1000 + 901} 150 {20 * 1000 + 1} 5000"
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)


def test_empty_inputs_decode_to_empty_mask():
    for empty in (None, float("nan"), np.nan, "", "   ", b"", "\t\n"):
        out = rle.decode(empty, (4, 5))
        assert out.shape == (4, 5) and out.dtype == np.uint8 and not out.any()
    pd = pytest.importorskip("pandas")
    assert not rle.decode(pd.NA, (4, 5)).any()
    assert rle.validate(None, (4, 5)) == 0


def test_siim_minus_one_is_empty_only_in_relative_mode():
    assert not rle.decode(" -1", (4, 4), relative=True).any()
    assert rle.validate("-1", (4, 4), relative=True) == 0
    with pytest.raises(rle.RLEError, match="odd number of tokens"):
        rle.decode("-1", (4, 4))


def test_decode_accepts_whitespace_bytes_touching_runs_and_plus_sign():
    want = np.zeros((3, 3), np.uint8)
    want.T.flat[0:4] = 1
    np.testing.assert_array_equal(rle.decode("  1 2\t3\n2 ", (3, 3)), want)  # touching runs are one run
    np.testing.assert_array_equal(rle.decode(b"1 4", (3, 3)), want)
    np.testing.assert_array_equal(rle.decode("+1 +4", (3, 3)), want)


# --- errors ---

WHERE = "train.csv row 17 (id abc)"

BAD = [
    ("1 2 3", False, "odd number of tokens (3)"),
    ("1", False, "odd number of tokens (1)"),
    ("1 x", False, "token 2 ('x') is not an integer"),
    ("1 2.5", False, "token 2 ('2.5') is not an integer"),
    ("1e3 2", False, "token 1 ('1e3') is not an integer"),
    ("1 - 2 2", False, "token 2 ('-') is not an integer"),
    ("1,2", False, "token 1 ('1,2') is not an integer"),
    ("1 0", False, "run 1 (start 1, length 0): length must be positive"),
    ("1 3 7 -2", False, "run 2 (start 7, length -2): length must be positive"),
    ("0 3", False, "run 1 (start 0, length 3): start must be >= 1"),
    ("-4 3", False, "run 1 (start -4, length 3): start must be >= 1"),
    ("95 7", False, "run 1 (start 95, length 7) runs past the last pixel of a 10x10 mask (100 pixels)"),
    ("101 1", False, "runs past the last pixel"),
    ("99999999999999999999 1", False, "token 1 ('99999999999999999999') is too large"),
    ("20 5 10 2", False, "run 2 (start 10, length 2) starts before the previous run (at pixel 20)"),
    ("20 5 22 2", False, "run 2 (start 22, length 2) overlaps the previous run (which ends at pixel 24)"),
    ("20 5 20 5", False, "overlaps the previous run"),
    ("5 2 -1 3", True, "run 2 (offset -1, length 3): offset must be >= 0"),
    ("-2 3", True, "run 1 (offset -2, length 3): offset must be >= 0"),
    ("0 0", True, "run 1 (offset 0, length 0): length must be positive"),
    ("90 5 5 1", True, "run 2 (offset 5, length 1) runs past the last pixel"),
    ("0 3 1", True, "odd number of tokens (3)"),
]


@pytest.mark.parametrize("text,relative,expected", BAD)
def test_bad_rle_raises_with_where(text, relative, expected):
    for call in (
        lambda: rle.decode(text, (10, 10), relative=relative, where=WHERE),
        lambda: rle.decode(text, (10, 10), order="C", relative=relative, where=WHERE),
        lambda: rle.validate(text, (10, 10), where=WHERE, relative=relative),
    ):
        with pytest.raises(rle.RLEError) as info:
            call()
        message = str(info.value)
        assert message.startswith(WHERE + ": "), message
        assert expected in message, message
        assert "\n" not in message


def test_runs_ending_on_the_last_pixel_are_valid():
    assert rle.validate("95 6", (10, 10)) == 6
    assert rle.validate("94 6", (10, 10), relative=True) == 6
    assert rle.decode("95 6", (10, 10))[4:, 9].all()


def test_error_without_where_and_error_type():
    assert issubclass(rle.RLEError, DataError)
    with pytest.raises(DataError) as info:
        rle.decode("1 2 3", (5, 5))
    assert str(info.value).startswith("RLE has an odd number of tokens")


def test_non_string_and_non_ascii_are_rle_errors():
    with pytest.raises(rle.RLEError, match=f"^{WHERE[:9]}.*must be a string, got int"):
        rle.decode(5, (3, 3), where=WHERE)
    with pytest.raises(rle.RLEError, match="non-ASCII"):
        rle.validate("1 ２", (3, 3), where=WHERE)


def test_argument_errors():
    with pytest.raises(ValueError, match="order"):
        rle.encode(np.zeros((2, 2)), order="K")
    with pytest.raises(ValueError, match="order"):
        rle.decode("1 1", (2, 2), order="row")
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        rle.decode("1 1", (2, 0))
    with pytest.raises(ValueError, match="shape"):
        rle.decode("1 1", (2, 2, 2))
    with pytest.raises(ValueError, match="2\\*\\*62"):
        rle.validate("1 1", (2**40, 2**40))


def test_validate_with_a_huge_shape_bound():
    # a submission validator that doesn't know an image's size checks against (1, 2**62) pixels
    assert rle.validate("5 10 461168601842738790 4", (1, 2**62)) == 14
    with pytest.raises(rle.RLEError, match="runs past the last pixel"):
        rle.validate("99999999999999999 5", (1, 10**17))


# --- the real thing: Kaggle's TGS salt train.csv against its PNG masks ---


def test_tgs_salt_train_csv_matches_png_masks_exactly():
    if not (TGS / "train.csv").is_file():
        pytest.skip(f"TGS salt data not found at {TGS}")
    cv2 = pytest.importorskip("cv2")
    pd = pytest.importorskip("pandas")
    table = pd.read_csv(TGS / "train.csv")
    assert len(table) == 4000
    empty = 0
    for row, (image_id, text) in enumerate(zip(table["id"], table["rle_mask"]), start=2):
        png = cv2.imread(str(TGS / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        truth = (png > 0).astype(np.uint8)
        where = f"train.csv row {row} (id {image_id})"
        np.testing.assert_array_equal(rle.decode(text, truth.shape, where=where), truth, err_msg=where)
        expected = "" if isinstance(text, float) and math.isnan(text) else text
        assert rle.encode(png) == expected, where
        empty += expected == ""
    assert empty == 1562
