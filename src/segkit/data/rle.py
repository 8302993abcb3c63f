"""Run-length encoding of binary masks, as Kaggle segmentation competitions read and write them.

Convention (Kaggle's default, ``order="F"``): pixels are numbered 1..H*W top to bottom, then left to
right (column-major), and a mask is the string ``"start length start length ..."`` of its foreground runs,
sorted, with no overlaps; an empty mask is ``""``. ``order="C"`` numbers pixels row-major instead (left to
right, then top to bottom), as a few competitions do.

``relative=True`` is the SIIM-ACR pneumothorax convention (its ``mask_functions.py``): the first start is the
**0-based** index of the first foreground pixel, and every later start is the number of background pixels
between the end of the previous run and the start of this one. So the absolute runs "11 3 21 2" (1-based) are
``"10 3 7 2"`` in relative form. SIIM marks an empty mask with ``-1``: ``decode``/``validate`` accept a lone
``-1`` as empty in relative mode; ``encode`` returns ``""`` for an empty mask in every mode.

Speed: the work runs in numba-compiled loops (compiled once per machine, then loaded from numba's cache):

* encode scans the mask in its memory order (a column-major scan of a row-major array reads 8 columns at
  once as one 64-bit word, and only rows where that word changes are looked at per column), and writes the
  ASCII digits straight into a byte buffer, decoded to ``str`` once: ``str()`` + ``join`` of a million numbers
  is what makes the usual numpy encoder slow on fragmented masks;
* decode parses the bytes of the string in one pass, validating as it goes, then fills a row-major uint8 mask.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from segkit.errors import DataError

__all__ = ["RLEError", "decode", "encode", "validate"]

# Error codes the parser returns; the Python side turns them into messages (numba can't format strings well).
_OK, _BAD_TOKEN, _TOO_BIG, _ODD, _BAD_LENGTH, _BAD_START, _PAST_END, _UNSORTED, _OVERLAP = range(9)

# A token with more digits than this could overflow int64 arithmetic; no mask has 10**18 pixels.
_MAX_DIGITS = 18

_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)


class RLEError(DataError):
    """A malformed RLE string: the message names the row (``where``) and the offending token or run."""


# --- encode kernels: transitions (0-based positions where the mask switches on or off), then digits ---


@njit(cache=True, nogil=True)
def _grow(buf, cnt):
    """Double an int64 buffer, keeping its first ``cnt`` values (worst-case sizing: 8 bytes a pixel)."""
    bigger = np.empty(2 * buf.size, np.int64)
    bigger[:cnt] = buf[:cnt]
    return bigger


@njit(cache=True, nogil=True, inline="always")
def _close(out, cnt, state, n):
    """Trim the transition buffer to ``cnt``; a run still open at the last pixel ends at ``n``."""
    if state == 1:
        if cnt + 1 >= out.size:
            out = _grow(out, cnt)
        out[cnt] = n
        cnt += 1
    return out[:cnt]


@njit(cache=True, nogil=True)
def _transitions_flat(flat, words):
    """Transitions of a mask traversed in flat (memory) order.

    ``words`` is the uint64 view of the first ``8 * len(words)`` bytes of ``flat``: a word that is all zero
    (while outside a run) or has no zero byte (inside a run) holds no transition and is skipped whole.
    """
    n = flat.size
    cap = min(n + 1, 4096)
    out = np.empty(cap, np.int64)
    cnt = 0
    state = 0
    for k in range(words.size):
        w = words[k]
        if state == 0:
            if w == 0:
                continue
        elif ((w - _ONES) & ~w & _HIGHS) == 0:  # classic "has a zero byte" test, exact as a yes/no
            continue
        if cnt + 8 >= cap:
            out = _grow(out, cnt)
            cap = out.size
        base = 8 * k
        for q in range(8):
            # branchless: always store the position, advance only on a change (noise masks change every pixel)
            v = 1 if flat[base + q] != 0 else 0
            out[cnt] = base + q
            cnt += v ^ state
            state = v
    for q in range(8 * words.size, n):
        if cnt + 2 >= cap:
            out = _grow(out, cnt)
            cap = out.size
        v = 1 if flat[q] != 0 else 0
        out[cnt] = q
        cnt += v ^ state
        state = v
    return _close(out, cnt, state, n)


@njit(cache=True, nogil=True)
def _transitions_columns(words, height, width):
    """Transitions of a row-major (H, W) mask walked column by column (Kaggle's order), not transposed.

    ``words`` is the (H, ceil(W/8)) uint64 view of the mask (zero-padded to a multiple of 8 columns): one word
    holds 8 neighbouring columns of a row. For each strip of 8 columns, the rows where the word differs from
    the row above are the only rows where any of those columns can switch; each column walks just those rows.
    """
    n = height * width
    cap = min(n + 1, 4096)
    out = np.empty(cap, np.int64)
    cnt = 0
    state = 0
    rows = np.empty(height, np.int64)
    row_words = np.empty(height, np.uint64)
    for s in range(words.shape[1]):
        prev = words[0, s]
        rows[0] = 0  # row 0 always counts: the state carries over from the bottom of the previous column
        row_words[0] = prev
        nrows = 1
        for r in range(1, height):
            w = words[r, s]
            if w != prev:
                rows[nrows] = r
                row_words[nrows] = w
                nrows += 1
                prev = w
        for c in range(min(8, width - 8 * s)):
            while cnt + nrows + 1 >= cap:
                out = _grow(out, cnt)
                cap = out.size
            base = (8 * s + c) * height
            shift = np.uint64(8 * c)
            for q in range(nrows):
                v = 1 if ((row_words[q] >> shift) & np.uint64(0xFF)) != 0 else 0
                out[cnt] = base + rows[q]
                cnt += v ^ state
                state = v
    return _close(out, cnt, state, n)


@njit(cache=True, nogil=True, inline="always")
def _put_int(buf, pos, v):
    """Write non-negative ``v`` as ASCII digits at ``buf[pos:]``; returns the position after them."""
    digits = 1
    t = v
    while t >= 10:
        t //= 10
        digits += 1
    end = pos + digits
    p = end - 1
    while p >= pos:
        buf[p] = 48 + v % 10
        v //= 10
        p -= 1
    return end


@njit(cache=True, nogil=True)
def _format(trans, n_pixels, relative):
    """ASCII bytes of ``"start length ..."`` from the transitions (pairs of 0-based [start, end))."""
    widest = 1
    t = n_pixels
    while t >= 10:
        t //= 10
        widest += 1
    buf = np.empty(trans.size * (widest + 1), np.uint8)
    pos = 0
    prev_end = 0
    for i in range(0, trans.size, 2):
        start = trans[i]
        end = trans[i + 1]
        if relative:
            pos = _put_int(buf, pos, start - prev_end)  # first run: prev_end is 0, so the 0-based start
        else:
            pos = _put_int(buf, pos, start + 1)
        buf[pos] = 32
        pos = _put_int(buf, pos + 1, end - start)
        buf[pos] = 32
        pos += 1
        prev_end = end
    return buf[: max(pos - 1, 0)]


# --- decode kernels ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _is_space(c):
    return c == 32 or (9 <= c <= 13)


@njit(cache=True, nogil=True)
def _parse(data, n_pixels, relative):
    """Parse and check ``data`` (ASCII bytes) in one pass.

    Returns ``(code, a, b, c, d, starts, ends, nruns, n_fg)``: on success code is ``_OK`` and the runs are
    0-based half-open ``[starts[i], ends[i])``. On failure ``a..d`` describe it: for token errors the token
    number and its byte span; for run errors the run number, its start and length as written, and the previous
    run's start (unsorted) or end (overlap), both 0-based.
    """
    size = data.size
    starts = np.empty(size // 4 + 1, np.int64)
    ends = np.empty(size // 4 + 1, np.int64)
    nruns = 0
    n_fg = 0
    ntok = 0
    first = 0
    prev_start = -1
    prev_end = 0
    i = 0
    while True:
        while i < size and _is_space(data[i]):
            i += 1
        if i >= size:
            break
        tok_begin = i
        negative = False
        if data[i] == 45 or data[i] == 43:  # '-' or '+': parsed so "-3" is reported as negative, not as junk
            negative = data[i] == 45
            i += 1
        digits_begin = i
        value = 0
        while i < size:
            digit = np.uint8(data[i] - np.uint8(48))  # wraps around for anything that isn't '0'..'9'
            if digit >= 10:
                break
            value = value * 10 + digit
            i += 1
        if i == digits_begin or (i < size and not _is_space(data[i])):
            while i < size and not _is_space(data[i]):
                i += 1
            return _BAD_TOKEN, ntok + 1, tok_begin, i, 0, starts, ends, 0, 0
        if i - digits_begin > _MAX_DIGITS:  # value may have wrapped; it is not used
            return _TOO_BIG, ntok + 1, tok_begin, i, 0, starts, ends, 0, 0
        if negative:
            value = -value
        ntok += 1
        if ntok % 2 == 1:
            first = value
            continue
        run = ntok // 2
        length = value
        if length <= 0:
            return _BAD_LENGTH, run, first, length, 0, starts, ends, 0, 0
        if relative:
            if first < 0:
                return _BAD_START, run, first, length, 0, starts, ends, 0, 0
            start = prev_end + first
        else:
            if first < 1:
                return _BAD_START, run, first, length, 0, starts, ends, 0, 0
            start = first - 1
        if start + length > n_pixels:
            return _PAST_END, run, first, length, 0, starts, ends, 0, 0
        if start < prev_start:
            return _UNSORTED, run, first, length, prev_start, starts, ends, 0, 0
        if start < prev_end:
            return _OVERLAP, run, first, length, prev_end, starts, ends, 0, 0
        starts[nruns] = start
        ends[nruns] = start + length
        nruns += 1
        n_fg += length
        prev_start = start
        prev_end = start + length
    if ntok % 2 == 1:
        return _ODD, ntok, 0, 0, 0, starts, ends, 0, 0
    return _OK, 0, 0, 0, 0, starts, ends, nruns, n_fg


@njit(cache=True, nogil=True)
def _fill_rows(flat, starts, ends, nruns):
    for k in range(nruns):
        flat[starts[k]:ends[k]] = 1


@njit(cache=True, nogil=True)
def _fill_columns(out, starts, ends, nruns):
    """Set column-major runs in a zeroed row-major (H, W) array.

    Writing a run pixel by pixel down a column touches one cache line per pixel. Instead, mark where each
    column segment starts and stops (XOR, so a run that ends where the next begins cancels out), then take a
    running XOR down the columns, a whole row at a time. A run may wrap from a column's bottom to the next.
    """
    height, width = out.shape
    for k in range(nruns):
        p = starts[k]
        end = ends[k]
        while p < end:
            col = p // height
            row = p - col * height
            stop = min(end, (col + 1) * height)
            out[row, col] ^= 1
            if row + stop - p < height:
                out[row + stop - p, col] ^= 1
            p = stop
    for r in range(1, height):
        for c in range(width):
            out[r, c] ^= out[r - 1, c]


# --- public API --------------------------------------------------------------------------------------------


def _check_order(order: str) -> None:
    if order not in ("F", "C"):
        raise ValueError(f"RLE order must be 'F' (column-major, Kaggle) or 'C' (row-major), got {order!r}")


def _check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"RLE mask shape must be (height, width), got {shape!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"RLE mask shape must be positive, got {shape!r}")
    if height * width > 2**62:  # keeps every start + length sum inside int64 in the parser
        raise ValueError(f"RLE mask shape {shape!r} has more than 2**62 pixels")
    return height, width


def _words_of_rows(a: np.ndarray) -> np.ndarray:
    """(H, ceil(W/8)) uint64 view of a uint8 (H, W) mask; a zero-padded copy when a view isn't possible."""
    height, width = a.shape
    if width % 8 == 0 and a.flags.c_contiguous and a.ctypes.data % 8 == 0:
        return a.view(np.uint64)
    padded = np.zeros((height, -(-width // 8) * 8), np.uint8)
    padded[:, :width] = a
    return padded.view(np.uint64)


def _transitions_in_order(flat: np.ndarray) -> np.ndarray:
    """Transitions of a contiguous uint8 vector (already in the wanted pixel order)."""
    nwords = flat.size // 8
    if flat.ctypes.data % 8:  # a view at an odd offset: the word view would be misaligned
        flat = flat.copy()
    return _transitions_flat(flat, flat[: 8 * nwords].view(np.uint64))


def _transitions(a: np.ndarray, order: str) -> np.ndarray:
    """0-based positions where the mask switches on/off in the given pixel order (a run is [even, odd))."""
    # Column-major order of `a` is row-major order of `a.T`: pick whichever layout the memory already has.
    walk = a.T if order == "F" else a
    if walk.flags.c_contiguous:
        return _transitions_in_order(walk.reshape(-1))
    if walk.flags.f_contiguous:  # walk.T is row-major in memory and we want its columns one after another
        rows = walk.T
        return _transitions_columns(_words_of_rows(rows), rows.shape[0], rows.shape[1])
    if order == "F":  # strided view: a row-major copy is cheap, then walk its columns
        rows = np.ascontiguousarray(a)
        return _transitions_columns(_words_of_rows(rows), rows.shape[0], rows.shape[1])
    return _transitions_in_order(np.ascontiguousarray(a).reshape(-1))


def encode(mask, order: str = "F", relative: bool = False) -> str:
    """RLE string of a 2-D mask (nonzero = foreground): ``"start length ..."``, ``""`` when empty.

    ``order="F"``: Kaggle's column-major pixel numbering (1..H*W, top to bottom, then left to right);
    ``order="C"``: row-major. ``relative=True``: SIIM-ACR form (first start 0-based, later starts are the gap
    in pixels since the end of the previous run; see the module docstring). Accepts bool or any numeric dtype
    and any memory layout.
    """
    _check_order(order)
    a = np.asarray(mask)
    if a.ndim != 2:
        raise ValueError(f"RLE encodes 2-D masks, got shape {a.shape}")
    if a.dtype.itemsize != 1 or a.dtype.kind not in "biu":
        a = a != 0
    a = a.view(np.uint8)
    trans = _transitions(a, order)
    if trans.size == 0:
        return ""
    return str(memoryview(_format(trans, a.size, bool(relative))), "ascii")


def _rle_bytes(rle, relative: bool, where: str | None) -> bytes | None:
    """The RLE as ASCII bytes, or None for an empty mask (None, NaN, pandas NA, '', and SIIM's '-1')."""
    # pandas.NA is recognised by its type name so this module needs no pandas import.
    if rle is None or (isinstance(rle, float) and math.isnan(rle)) or type(rle).__name__ == "NAType":
        return None
    if isinstance(rle, str):
        try:
            data = rle.encode("ascii")
        except UnicodeEncodeError:
            raise RLEError(_message(where, f"RLE {_show(rle)} has a non-ASCII character")) from None
    elif isinstance(rle, (bytes, bytearray)):
        data = bytes(rle)
    else:
        raise RLEError(_message(where, f"RLE must be a string, got {type(rle).__name__} {_show(rle)}"))
    if relative and data.strip() == b"-1":
        return None
    return data


def _show(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def _message(where: str | None, text: str) -> str:
    return f"{where}: {text}" if where else text


def _parse_checked(data: bytes, shape: tuple[int, int], relative: bool, where: str | None):
    height, width = shape
    n_pixels = height * width
    code, a, b, c, d, starts, ends, nruns, n_fg = _parse(np.frombuffer(data, np.uint8), n_pixels, relative)
    if code == _OK:
        return starts, ends, nruns, n_fg
    start_name = "offset" if relative else "start"
    if code == _BAD_TOKEN:
        token = data[b:c].decode("ascii", "replace")
        text = f"RLE token {a} ({_show(token)}) is not an integer"
    elif code == _TOO_BIG:
        token = data[b:c].decode("ascii", "replace")
        text = f"RLE token {a} ({_show(token)}) is too large (more than {_MAX_DIGITS} digits)"
    elif code == _ODD:
        text = f"RLE has an odd number of tokens ({a}); expected start/length pairs"
    else:
        run = f"RLE run {a} ({start_name} {b}, length {c})"
        if code == _BAD_LENGTH:
            text = f"{run}: length must be positive"
        elif code == _BAD_START and relative:
            text = f"{run}: offset must be >= 0 (relative RLE: first start is 0-based, then gaps)"
        elif code == _BAD_START:
            text = f"{run}: start must be >= 1 (pixels are numbered from 1)"
        elif code == _PAST_END:
            text = f"{run} runs past the last pixel of a {height}x{width} mask ({n_pixels} pixels)"
        elif code == _UNSORTED:
            text = f"{run} starts before the previous run (at pixel {d + 1}): runs must be sorted"
        else:
            text = f"{run} overlaps the previous run (which ends at pixel {d})"
    raise RLEError(_message(where, text))


def decode(rle, shape, order: str = "F", relative: bool = False, where: str | None = None) -> np.ndarray:
    """uint8 (H, W) row-major 0/1 mask of an RLE string; None, NaN, '' (and SIIM's '-1') give an empty mask.

    Raises :class:`RLEError` (message starting with ``where``, e.g. ``"train.csv row 17 (id abc)"``) for a
    non-integer token, an odd token count, a non-positive length, a start below 1 (below 0 for relative), a
    run past the last pixel, and runs that are unsorted or overlap. Runs that merely touch are accepted.
    """
    _check_order(order)
    height, width = _check_shape(shape)
    out = np.zeros((height, width), np.uint8)
    data = _rle_bytes(rle, relative, where)
    if data is None:
        return out
    starts, ends, nruns, _ = _parse_checked(data, (height, width), bool(relative), where)
    if order == "F":
        _fill_columns(out, starts, ends, nruns)
    else:
        _fill_rows(out.reshape(-1), starts, ends, nruns)
    return out


def runs(rle, shape, where: str | None = None, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The runs of an RLE string as 0-based (starts, exclusive ends) in its pixel numbering, checked like
    :func:`decode`; empty arrays for an empty mask. Two masks of one image overlap where their runs intersect,
    in either pixel order, so overlaps can be found without building masks."""
    height, width = _check_shape(shape)
    data = _rle_bytes(rle, relative, where)
    if data is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts, ends, nruns, _ = _parse_checked(data, (height, width), bool(relative), where)
    return np.asarray(starts[:nruns], np.int64), np.asarray(ends[:nruns], np.int64)


def encode_labels(labels: np.ndarray, order: str = "F") -> list[str]:
    """RLE strings of the objects 1..N of an (H, W) label map (0 the background), object n at index n - 1; an
    id with no pixel gets ``""``. One pass over the image, not one per object."""
    _check_order(order)
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel(order="F" if order == "F" else "C")
    where = np.flatnonzero(flat)
    ids = flat[where]
    by_object = np.argsort(ids, kind="stable")  # each object's pixels stay in pixel order
    where, ids = where[by_object], ids[by_object]
    cuts = np.searchsorted(ids, np.arange(1, n + 2))
    out = []
    for k in range(n):
        pixels = where[cuts[k]:cuts[k + 1]]
        if not len(pixels):
            out.append("")
            continue
        breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
        starts = pixels[np.concatenate([[0], breaks])]
        lengths = np.diff(np.concatenate([[0], breaks, [len(pixels)]]))
        out.append(" ".join(f"{a} {b}" for a, b in zip((starts + 1).tolist(), lengths.tolist())))
    return out


def validate(rle, shape, where: str | None = None, relative: bool = False) -> int:
    """Check an RLE string against a mask shape without building the mask; returns its foreground pixel count.

    Raises :class:`RLEError` exactly where :func:`decode` would. Pixel order doesn't matter here: both orders
    number the same H*W pixels.
    """
    height, width = _check_shape(shape)
    data = _rle_bytes(rle, relative, where)
    if data is None:
        return 0
    return int(_parse_checked(data, (height, width), bool(relative), where)[3])
