"""Reading byte ranges of a store straight into memory the model computes on.

"direct": O_DIRECT reads into the caller's (page-aligned) buffer: no page-cache copy. Where the file
system refuses O_DIRECT (tmpfs), buffered reads followed by posix_fadvise(DONTNEED), said once.
"mmap": the range is mapped; the model computes on the mapped pages (zero copy from the page cache).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor


from .errors import StoreCorruptError, StoreTruncatedError
from .store import UNIT_ALIGN, Unit, unit_checksum

log = logging.getLogger("swapnet_core.io")
IO_MODES = ("direct", "mmap")
_MAX_READ = 1 << 30  # Linux returns at most ~2 GiB per read call; ask for less
QUEUE_DEPTH, CHUNK_BYTES = 4, 4 << 20  # reads in flight per range, and their size (NVMe wants depth)
_warned_fallback: set[str] = set()
_warn_lock = threading.Lock()


VERIFY_MODES = ("first", "always", "never")
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+


class BlockReader:
    """Reads unit ranges of one store file, checking each unit's CRC32.

    verify="first" (default): a unit is checked the first time it is read, and again whenever the
    file changes (its size or mtime, checked with one fstat per read); "always": on every read (the
    checksum costs CPU next to the model, about 4 GB/s of it); "never".

    A range of at least two chunks is split into up to `queue_depth` contiguous pieces of at least
    `chunk_bytes`, read at once (the calling thread reads one itself): the device sees a queue.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "direct", verify: str | bool = "first",
                 queue_depth: int = QUEUE_DEPTH, chunk_bytes: int = CHUNK_BYTES):
        if queue_depth < 1 or chunk_bytes < UNIT_ALIGN or chunk_bytes % UNIT_ALIGN:
            raise ValueError(f"queue_depth must be >= 1 and chunk_bytes a multiple of {UNIT_ALIGN}")
        self.queue_depth, self.chunk_bytes = queue_depth, chunk_bytes
        self._pool: ThreadPoolExecutor | None = None  # made on the first range that needs it
        if mode not in IO_MODES:
            raise ValueError(f"io mode must be one of {IO_MODES}, got {mode!r}")
        verify = {True: "first", False: "never"}.get(verify, verify)
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path, self.mode, self.verify = str(path), mode, verify
        self.effective_mode = mode
        self._verified: set[int] = set()
        self._fd = -1
        if mode == "direct":
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                self.effective_mode = "buffered"
                with _warn_lock:
                    if self.path not in _warned_fallback:
                        _warned_fallback.add(self.path)
                        log.warning("%s: O_DIRECT is not supported here; reading through the page cache "
                                    "and dropping it after each read (posix_fadvise DONTNEED)", self.path)
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY)
        self._signature = self._stat()
        st = os.fstat(self._fd)
        self.identity = (st.st_dev, st.st_ino)  # the file read, even after its path names another one

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _stat(self) -> tuple[int, int]:
        st = os.fstat(self._fd)
        return st.st_size, st.st_mtime_ns

    def _to_check(self, units: list[Unit]) -> list[Unit]:
        if self.verify == "never":
            return []
        if self.verify == "always":
            return units
        signature = self._stat()
        if signature != self._signature:  # written to since we checked: trust nothing checked before
            self._signature = signature
            self._verified.clear()
        return [u for u in units if u.index not in self._verified]

    def read_into(self, units: list[Unit], dest: memoryview) -> int:
        """Read consecutive units (one contiguous range) into dest, which must be page-aligned for
        direct mode. Returns the bytes read."""
        start, end = units[0].offset, units[-1].end
        n = end - start
        if self.queue_depth > 1 and n >= 2 * self.chunk_bytes:
            self._read_chunked(units, dest, start, n)
        else:
            self._read_range(units, dest, start, 0, n)
        if self.effective_mode == "buffered":
            os.posix_fadvise(self._fd, start, n, os.POSIX_FADV_DONTNEED)
        self.check(self._to_check(units), dest, start)
        return n

    def _read_range(self, units: list[Unit], dest: memoryview, start: int, begin: int, end: int) -> None:
        """Read file bytes start+begin .. start+end into dest[begin:end]."""
        done = begin
        while done < end:
            chunk = min(end - done, _MAX_READ)
            try:
                got = os.preadv(self._fd, [dest[done:done + chunk]], start + done)
            except OSError:  # O_DIRECT after a short read lands off alignment (EINVAL): say why
                self._check_size(units)
                raise
            if got < chunk:
                self._check_size(units)
            if got <= 0:
                self._check_size(units)
                raise StoreTruncatedError(f"{self.path}: unit '{units[0].name}' and on: read {start + done}.."
                                          f"{start + end} came back short", path=self.path, unit=units[0].name)
            done += got

    def _read_chunked(self, units: list[Unit], dest: memoryview, start: int, n: int) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.queue_depth - 1, thread_name_prefix="swapnet-read")
        # contiguous pieces, one per reader, each a multiple of the chunk size
        pieces = min(self.queue_depth, n // self.chunk_bytes)
        step = -(-(n // pieces) // UNIT_ALIGN) * UNIT_ALIGN
        bounds = [(k * step, min(n, (k + 1) * step)) for k in range(pieces)]
        futures = [self._pool.submit(self._read_range, units, dest, start, a, b) for a, b in bounds[1:]]
        error = None
        try:
            self._read_range(units, dest, start, *bounds[0])
        except BaseException as e:  # noqa: BLE001 - wait for the others before raising: they write into dest
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001
                error = error or e
        if error is not None:
            raise error

    def _check_size(self, units: list[Unit]) -> None:
        """Raise StoreTruncatedError naming the first unit the file no longer holds whole."""
        size = os.fstat(self._fd).st_size
        cut = next((u for u in units if u.end > size), None)
        if cut is not None:
            raise StoreTruncatedError(f"{self.path} is truncated: unit '{cut.name}' ends at byte {cut.end}, the "
                                      f"file has {size} bytes (it was cut or is being rewritten in place)",
                                      path=self.path, unit=cut.name)

    def map(self, units: list[Unit]) -> mmap.mmap:
        """Map consecutive units and fault them in now, on the I/O thread (not during compute).

        Touching a mapped page past the end of the file kills the process with SIGBUS, so the file's
        size is checked (fstat) before the mapping is touched, and again once its pages are in: a
        truncated file raises StoreTruncatedError instead. What remains is a race no check can close:
        a truncation landing after the second check, while the model computes on this block, still
        raises SIGBUS (the kernel drops the mapped pages). Direct io has no such window."""
        start, end = units[0].offset, units[-1].end
        self._check_size(units)
        try:
            m = mmap.mmap(self._fd, end - start, flags=mmap.MAP_PRIVATE, offset=start)
        except ValueError:
            self._check_size(units)
            raise StoreTruncatedError(f"{self.path}: cannot map {start}..{end} (file truncated?)",
                                      path=self.path, unit=units[0].name) from None
        view = memoryview(m)
        try:
            try:  # faults the pages in; past the end of the file it fails (EFAULT) instead of SIGBUS
                m.madvise(_MADV_POPULATE_READ)
                populated = True
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._check_size(units)
                    raise StoreTruncatedError(f"{self.path}: cannot read mapped units '{units[0].name}'.."
                                              f"'{units[-1].name}': {e}", path=self.path, unit=units[0].name) from None
                populated = False  # an older kernel: the checksum below touches the pages
            self._check_size(units)
            todo = self._to_check(units)
            self.check(units if not populated else todo, view, start)
        except BaseException:
            view.release()
            m.close()
            raise
        view.release()
        return m

    def check(self, units: list[Unit], buf: memoryview, base: int) -> None:
        for u in units:
            crc = unit_checksum(buf[u.offset - base:u.end - base])
            if crc != u.checksum:
                raise StoreCorruptError(self.path, u.name, f"{u.checksum:08x}", f"{crc:08x}")
            self._verified.add(u.index)


def page_cache_residency(path: str | os.PathLike) -> float:
    """Share of the file's pages in the page cache (mincore over a mapping of the file)."""
    import ctypes

    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
