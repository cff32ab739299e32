"""A KV cache computed elsewhere, put into a llama.cpp context as one sequence's state, so that a
prompt prefilled by a faster-prefilling runtime (OpenVINO, ONNX Runtime) is decoded by llama.cpp.

llama.cpp saves and restores a sequence's cache as bytes (llama_state_seq_get_data /
llama_state_seq_set_data, its public API for prompt caching); this module reads and writes that
layout (llama.cpp's llama_kv_cache::state_write, vendored by llama-cpp-python 0.3.36):

    u32 magic 0xaf143cd8, i32 seq_id (llama_context::state_seq_get_data)
    u32 n_stream; per stream: u32 cell_count, and when > 0:
      per cell: i32 pos, u32 n_seq_id, i32 seq_id * n_seq_id
      u32 v_trans, u32 n_layer
      per layer: i32 k_type, u64 k_row_bytes, k rows (one per cell: kv_heads x head_dim)
      per layer, v_trans == 0: i32 v_type, u64 v_row_bytes, v rows
                 v_trans == 1: i32 v_type, u32 v_element_bytes, u32 n_embd_v, v columns (one per embedding element)

The settings that decide the layout (stream count, v_trans, cache types) are read from the context
itself: a one-token sequence is decoded and its state parsed (`probe`), never assumed. Only F16 and
F32 caches are written (a quantized cache type is rotated and blocked by llama.cpp); anything else
is an UnsupportedModelError. Whether a handed-over cache decodes as llama.cpp's own is measured,
not trusted: aiopt.llm.lm_quality.score decodes through it and the quality floor judges the result.
"""
from __future__ import annotations

import ctypes
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from aiopt.errors import UnsupportedModelError

STATE_MAGIC = 0xAF143CD8  # llama_context's io_magic: a buffer from another layout is refused by llama.cpp, and here
GGML_TYPES = {0: np.float32, 1: np.float16}  # ggml_type -> numpy dtype of the cache types written here
TORCH_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


@dataclass(frozen=True)
class CacheLayout:
    """How a llama.cpp context stores its KV cache: what a state buffer for it must say."""

    n_stream: int
    v_trans: bool
    k_type: int
    v_type: int
    layers: int


@dataclass
class SequenceState:
    """One sequence's cache as llama.cpp saved it: positions, and per layer keys and values
    (cells x kv_heads*head_dim, the cache's own dtype)."""

    layout: CacheLayout
    positions: np.ndarray
    keys: list[np.ndarray]
    values: list[np.ndarray]


def parse(buffer: bytes) -> SequenceState:
    """The one non-empty stream of a sequence's state (llama_state_seq_get_data's bytes)."""
    view, at = memoryview(buffer), 0

    def read(fmt: str):
        nonlocal at
        values = struct.unpack_from("<" + fmt, view, at)
        at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(dtype, count: int) -> np.ndarray:
        nonlocal at
        data = np.frombuffer(view, dtype=dtype, count=count, offset=at)
        at += data.nbytes
        return data

    magic, _seq = read("Ii")
    if magic != STATE_MAGIC:
        raise UnsupportedModelError(f"this llama.cpp saves sequence state in a layout aiopt does not read (magic {magic:#x}); "
                                    "hand-over of a KV cache needs llama-cpp-python 0.3.36's layout")
    n_stream = read("I")
    for _ in range(n_stream):
        cells = read("I")
        if cells:
            break
    else:
        raise ValueError("the state holds no cells")
    positions = np.empty(cells, dtype=np.int32)
    for i in range(cells):
        positions[i], n_seq = read("iI")
        at += 4 * n_seq
    v_trans, layers = read("II")
    keys, values, k_type, v_type = [], [], None, None
    for _ in range(layers):
        k_type, row_bytes = read("iQ")
        dtype = _dtype(k_type)
        keys.append(array(dtype, cells * row_bytes // np.dtype(dtype).itemsize).reshape(cells, -1))
    for _ in range(layers):
        if v_trans:
            v_type, _element, width = read("iII")
            values.append(array(_dtype(v_type), width * cells).reshape(width, cells).T)
        else:
            v_type, row_bytes = read("iQ")
            dtype = _dtype(v_type)
            values.append(array(dtype, cells * row_bytes // np.dtype(dtype).itemsize).reshape(cells, -1))
    return SequenceState(CacheLayout(n_stream, bool(v_trans), k_type, v_type, layers), positions, keys, values)


def build(layout: CacheLayout, keys: list[np.ndarray], values: list[np.ndarray], start: int = 0) -> bytearray:
    """A sequence state holding `keys`/`values` (per layer: one row per cell, kv_heads*head_dim
    elements, or any array whose first axis is the cells) at positions start.. ; what
    llama_state_seq_set_data reads into one sequence (whose id it sets itself). Each array is
    converted to the cache's dtype straight into the one buffer (a route's hand-over is inside its
    time to first token)."""
    import torch  # heavy: loaded with the runners a route runs on, never by `aiopt --help`

    cells = keys[0].shape[0]
    k_dtype, v_dtype = np.dtype(_dtype(layout.k_type)), np.dtype(_dtype(layout.v_type))
    meta = np.zeros(cells, dtype=[("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])
    meta["pos"], meta["n_seq"] = np.arange(start, start + cells), 1
    head = struct.pack("<IiII", STATE_MAGIC, 0, layout.n_stream, cells) + meta.tobytes() + struct.pack("<II", int(layout.v_trans), layout.layers)
    k_head = struct.calcsize("<iQ")
    v_head = struct.calcsize("<iII" if layout.v_trans else "<iQ")
    size = (len(head) + sum(k_head + k[0].size * k.shape[0] * k_dtype.itemsize for k in keys)
            + sum(v_head + v[0].size * v.shape[0] * v_dtype.itemsize for v in values) + 4 * (layout.n_stream - 1))
    buffer, at = bytearray(size), len(head)  # the other streams' cell counts at the end stay 0: empty
    buffer[:at] = head

    def put(array: np.ndarray, dtype: np.dtype, shape: tuple) -> None:
        nonlocal at
        # torch converts a strided float32 view to float16 about 5x faster than numpy (F16C; 4 vs 23 ms for
        # the 0.5B's 512-token cache): the hand-over is inside the route's time to first token
        target = torch.frombuffer(buffer, dtype=getattr(torch, TORCH_DTYPES[dtype]), count=array.size, offset=at).view(shape)
        with warnings.catch_warnings():  # a read-only source (a runtime's output) is only read here
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(np.asarray(array))
        target.copy_(source)
        at += array.size * dtype.itemsize

    for k in keys:
        struct.pack_into("<iQ", buffer, at, layout.k_type, k[0].size * k_dtype.itemsize)
        at += k_head
        put(k, k_dtype, k.shape)
    for v in values:
        if layout.v_trans:
            struct.pack_into("<iII", buffer, at, layout.v_type, v_dtype.itemsize, v[0].size)
            at += v_head
            put(np.moveaxis(v, 0, -1), v_dtype, v.shape[1:] + v.shape[:1])  # one column per embedding element
        else:
            struct.pack_into("<iQ", buffer, at, layout.v_type, v[0].size * v_dtype.itemsize)
            at += v_head
            put(v, v_dtype, v.shape)
    return buffer


def _dtype(ggml_type: int):
    if ggml_type not in GGML_TYPES:
        raise UnsupportedModelError(f"llama.cpp's KV cache is of ggml type {ggml_type}; a cache is handed over only into an F16 or F32 "
                                    "cache (llama.cpp's default, F16)")
    return GGML_TYPES[ggml_type]


def read_sequence(llama_cpp, ctx, seq_id: int) -> SequenceState:
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id)
    return parse(bytes(buffer)[:written])


def write_sequence(llama_cpp, ctx, seq_id: int, state: bytes | bytearray) -> None:
    # build's bytearray is passed as it is; bytes (immutable) are copied once
    buffer = (ctypes.c_uint8 * len(state)).from_buffer(state) if isinstance(state, bytearray) else (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_seq_set_data(ctx, buffer, len(state), seq_id) != len(state):
        raise UnsupportedModelError("llama.cpp refused the handed-over KV cache (llama_state_seq_set_data read less than it was given)")


def hf_to_llamacpp_keys(keys: np.ndarray, rotary_permuted: bool) -> np.ndarray:
    """Keys (kv_heads, cells, head_dim) as Hugging Face computes them -> llama.cpp's rows, one per
    cell (a view whose first axis is the cells; reshape(cells, -1) for the kv_heads*head_dim row).
    Where the GGUF's q/k rows were permuted into llama.cpp's interleaved rotary layout (Llama),
    each head's rotate-half halves are interleaved the same way."""
    heads, cells, dim = keys.shape
    if rotary_permuted:
        return keys.reshape(heads, cells, 2, dim // 2).transpose(1, 0, 3, 2)
    return keys.transpose(1, 0, 2)


def hf_to_llamacpp_values(values: np.ndarray) -> np.ndarray:
    """Values (kv_heads, cells, head_dim) -> llama.cpp's rows, one per cell (a view, as above)."""
    return values.transpose(1, 0, 2)
