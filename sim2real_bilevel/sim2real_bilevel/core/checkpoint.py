"""Crash-safe persistence of an outer-loop run (npz + json, never pickle).

A run directory holds

  checkpoint.npz       the state after the last completed outer iteration (``MethodRun.state_dict``;
                       the real batches it keeps are referred to by their number in real/, the
                       iteration records by their count in history.jsonl)
  history.jsonl        one JSON iteration record per line, appended (and fsync'd) before the
                       checkpoint that counts it; lines past that count (a crash between the
                       two writes) are cut off at the next save
  checkpoint.prev.npz  the one before it: the fallback when the newest file is torn or corrupted
  real/batch_NNNNNN.npz  every real batch, written the moment it arrives (the real data collected);
                       NNNNNN is the run's real-batch counter, so a batch collected after the last
                       checkpoint is found and reused on resume instead of re-running the robot.

Every file is one ``.npz`` archive whose members are plain arrays (``np.load(...,
allow_pickle=False)`` reads it), plus two members of our own: ``__meta__`` (UTF-8 JSON: format
name, version, the caller's JSON state) and ``__sha256__`` (hex digest over the metadata and
every array's name, dtype, shape and bytes).  A file that does not open, has another format
version, or whose digest does not match is rejected with ``CheckpointError``.

Writes are atomic: the bytes go to a temporary file in the same directory, are flushed and
fsync'd, replace the target with ``os.replace`` and the directory is fsync'd, so after a
crash (SIGKILL, power loss) the target is either the old or the new complete file.

Periodic sync (``PeriodicSync``, optional): every file is written and renamed into place as above
at once, but its fsyncs are made for all files together at most every ``period_s`` seconds (and at
``close``).  A SIGKILL loses nothing (the kernel holds every completed write); a power loss loses
at most the writes since the last sync.  After each sync the checkpoint is also hard-linked as
checkpoint.durable.npz, the last checkpoint whose history lines and real batches are all on disk:
the fallback a resume takes when the newer files did not survive (``MethodRun.attach_run_dir``).

Write-behind (``WriteBehind``, optional): the bytes are encoded on the caller's thread (a
consistent snapshot) and the file operations -- each still atomic and fsync'd as above -- run
in order on a writer thread with a bounded queue, so a loop does not wait on the disk.  The
files on disk are then always a prefix of the writes asked for: a crash loses at most the
queued writes (a resume redoes those iterations, as it redoes work in flight), never leaves a
checkpoint that refers to a batch or record not yet written.  ``flush``/``close`` wait until
everything queued is on disk; a failed write is raised at the next call.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .problem import Trajectories

FORMAT = 'sim2real_bilevel.checkpoint'
VERSION = 2          # 2: history.jsonl and real/ referred to, not copied into every checkpoint
CHECKPOINT = 'checkpoint.npz'
PREVIOUS = 'checkpoint.prev.npz'
DURABLE = 'checkpoint.durable.npz'
REAL_DIR = 'real'
_META, _DIGEST = '__meta__', '__sha256__'

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be trusted (missing, torn, corrupted, other version)."""


def _digest(meta_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    hasher = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(f'\0{name}\0{array.dtype.str}\0{array.shape}\0'.encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # platforms without directory handles: the rename is all we have
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole
    (``sync`` False: without the fsyncs, which ``PeriodicSync`` makes later)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as stream:
        stream.write(data)
        stream.flush()
        if sync:
            os.fsync(stream.fileno())
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:        # replaced since (the newer file is in the set too)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of one checkpoint file: the arrays, the JSON metadata and their digest."""
    for name, array in arrays.items():
        if name.startswith('__') or np.asarray(array).dtype == object:
            raise ValueError(f'checkpoint array {name!r}: reserved name or object dtype')
    meta_bytes = json.dumps({'format': FORMAT, 'version': VERSION, 'state': meta},
                            allow_nan=True, sort_keys=True).encode()
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    members = dict(arrays)
    members[_META] = np.frombuffer(meta_bytes, dtype=np.uint8)
    members[_DIGEST] = np.frombuffer(_digest(meta_bytes, arrays).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def write(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(Path(path), encode(meta, arrays))


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one file; ``CheckpointError`` says why it cannot be trusted."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            members = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f'{path}: no such file') from None
    except Exception as err:        # torn zip, bad member: zipfile/ValueError/OSError/EOFError
        raise CheckpointError(f'{path}: unreadable ({type(err).__name__}: {err})') from None
    if _META not in members or _DIGEST not in members:
        raise CheckpointError(f'{path}: not a {FORMAT} file (no {_META}/{_DIGEST} member)')
    meta_bytes = members.pop(_META).tobytes()
    digest = members.pop(_DIGEST).tobytes().decode(errors='replace')
    if _digest(meta_bytes, members) != digest:
        raise CheckpointError(f'{path}: checksum mismatch (torn or corrupted file)')
    document = json.loads(meta_bytes)
    if document.get('format') != FORMAT or document.get('version') != VERSION:
        raise CheckpointError(f'{path}: format {document.get("format")!r} version {document.get("version")!r}; '
                              f'expected {FORMAT!r} version {VERSION}')
    return document['state'], members


class WriteBehind:
    """Ordered file writes on a thread of their own, at most ``max_pending`` queued (``submit``
    then waits: a disk slower than the loop slows the loop instead of piling up memory).

    ``submit(what, write)`` queues ``write()`` (a function doing file operations only; its
    data already encoded); writes run in submission order.  The first failed write is kept and
    raised (``CheckpointError`` naming it) at the next ``submit``, ``flush`` or ``close``; the
    writes queued after it are dropped, so the files stay a prefix of the writes asked for.
    ``flush()`` returns once every queued write is on disk; ``close()`` flushes and ends the
    thread (later submits write synchronously, in the caller's thread)."""

    def __init__(self, max_pending: int = 8):
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: Optional[str] = None
        self.written = 0
        self.closed = False
        self.thread = threading.Thread(target=self._work, daemon=True, name='checkpoint-writer')
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                what, write = item
                if self.error is None:
                    try:
                        write()
                        self.written += 1
                    except Exception as err:      # noqa: BLE001 -- kept and raised in the caller's thread
                        self.error = f'{what}: {type(err).__name__}: {err}'
            finally:
                self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            raise CheckpointError(f'write-behind failed: {self.error} (later writes were not made)')

    def submit(self, what: str, write: Callable[[bool], None], paths=()) -> None:
        self._raise()
        if self.closed:
            write(True)
            return
        self.queue.put((what, lambda: write(True)))

    def checkpointed(self, run_dir: Path) -> None:
        """A checkpoint was asked for (every write is fsync'd as it is made: nothing to do)."""

    def pending(self) -> int:
        return self.queue.unfinished_tasks

    def flush(self) -> None:
        self.queue.join()
        self._raise()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put(None)
            self.thread.join()
        self._raise()


class PeriodicSync:
    """Writes made at once (each atomic), their fsyncs made together at most every ``period_s``
    seconds, when a checkpoint is saved (``checkpointed``), and at ``flush``/``close``; after each
    sync the checkpoint of that moment is hard-linked as RUN_DIR/checkpoint.durable.npz.  The same
    interface as ``WriteBehind``; ``syncs`` counts the syncs made."""

    def __init__(self, period_s: float, clock: Callable[[], float] = None):
        import time
        self.period_s = float(period_s)
        self.clock = clock or time.monotonic
        self.last = self.clock()
        self.files: dict[Path, None] = {}       # written since the last sync, in order
        self.directories: dict[Path, None] = {}
        self.run_dirs: dict[Path, None] = {}     # checkpointed since the last sync
        self.syncs = 0
        self.closed = False

    def submit(self, what: str, write: Callable[[bool], None], paths=()) -> None:
        write(self.closed)
        if not self.closed:
            for path in paths:
                path = Path(path)
                self.files[path] = None
                self.directories[path.parent] = None

    def pending(self) -> int:
        return len(self.files)

    def checkpointed(self, run_dir: Path) -> None:
        self.run_dirs[Path(run_dir)] = None
        if self.clock() - self.last >= self.period_s:
            self.flush()

    def flush(self) -> None:
        """fsync every file written since the last sync, then their folders; then the durable link."""
        if not self.files and not self.run_dirs:
            return
        for path in self.files:
            _fsync_file(path)
        for directory in self.directories:
            _fsync_dir(directory)
        for run_dir in self.run_dirs:
            _link_durable(run_dir)
        self.files, self.directories, self.run_dirs = {}, {}, {}
        self.last = self.clock()
        self.syncs += 1

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


def _link_durable(run_dir: Path) -> None:
    """RUN_DIR/checkpoint.durable.npz: the (synced) checkpoint.npz, by a hard link (a copy where
    there are none), replaced atomically."""
    aside = run_dir / f'.{DURABLE}.{os.getpid()}.tmp'
    aside.unlink(missing_ok=True)
    try:
        os.link(run_dir / CHECKPOINT, aside)
    except FileNotFoundError:
        return
    except OSError:
        shutil.copyfile(run_dir / CHECKPOINT, aside)
        _fsync_file(aside)
    os.replace(aside, run_dir / DURABLE)
    _fsync_dir(run_dir)


def _run_write(writer, what: str, write: Callable[[bool], None], paths=()) -> None:
    """``write(sync)`` now and fsync'd (no writer), or as ``writer`` (``WriteBehind``,
    ``PeriodicSync``) says; ``paths``: the files it makes or appends to."""
    if writer is None:
        write(True)
    else:
        writer.submit(what, write, paths)


def save_checkpoint(run_dir: Path, meta: dict, arrays: dict[str, np.ndarray],
                    writer: Optional[WriteBehind] = None) -> Path:
    """Atomically replace RUN_DIR/checkpoint.npz, keeping the one it replaces as
    checkpoint.prev.npz.  ``checkpoint.npz`` exists at every instant once written: the
    previous one is hard-linked (or copied) aside before the new one is renamed over it.
    With ``writer``, encoded here and written behind."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = encode(meta, arrays)
    _run_write(writer, f'{run_dir / CHECKPOINT}', lambda sync: _replace_checkpoint(run_dir, data, sync),
               [run_dir / CHECKPOINT])
    if writer is not None:
        writer.checkpointed(run_dir)
    return run_dir / CHECKPOINT


def _replace_checkpoint(run_dir: Path, data: bytes, sync: bool = True) -> None:
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if current.exists():
        aside = run_dir / f'.{PREVIOUS}.{os.getpid()}.tmp'
        aside.unlink(missing_ok=True)
        try:
            os.link(current, aside)
        except OSError:              # file systems without hard links
            shutil.copyfile(current, aside)
        os.replace(aside, previous)
    atomic_write_bytes(current, data, sync)


def checkpoint_candidates(run_dir: Path):
    """Yields (file name, meta, arrays) of each trustworthy checkpoint of RUN_DIR, newest first:
    checkpoint.npz, checkpoint.prev.npz, checkpoint.durable.npz (``PeriodicSync``'s last synced
    one).  A rejected file is logged; if files exist and none is yielded, ``CheckpointError``
    (never silently start over)."""
    run_dir = Path(run_dir)
    errors = []
    for name in (CHECKPOINT, PREVIOUS, DURABLE):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            meta, arrays = read(path)
        except CheckpointError as err:
            log.warning('%s; trying the previous checkpoint', err)
            errors.append(str(err))
            continue
        if errors:
            log.warning('resuming %s from %s (older than the rejected newer file)', run_dir, path.name)
        errors = []
        yield name, meta, arrays
    if errors:
        raise CheckpointError(f'{run_dir}: no usable checkpoint: ' + '; '.join(errors))


def load_checkpoint(run_dir: Path) -> Optional[tuple[dict, dict[str, np.ndarray]]]:
    """The newest trustworthy checkpoint of RUN_DIR as (meta, arrays), or None if the run
    has none (``checkpoint_candidates``' first)."""
    for _, meta, arrays in checkpoint_candidates(run_dir):
        return meta, arrays
    return None


def has_checkpoint(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (CHECKPOINT, PREVIOUS, DURABLE))


def set_aside_unreadable_batches(run_dir: Path, after: int) -> list[Path]:
    """Rename real/batch files numbered above ``after`` that do not read (torn by a power loss
    before their sync) to ``*.unsynced``, so the batch is collected again; returns the new names."""
    moved = []
    for path in sorted((Path(run_dir) / REAL_DIR).glob('batch_*.npz')):
        if int(path.stem.split('_')[1]) <= after:
            continue
        try:
            read(path)
        except CheckpointError:
            target = path.with_name(path.name + '.unsynced')
            os.replace(path, target)
            moved.append(target)
    return moved


# --- trajectories ------------------------------------------------------------------------------------------
_BATCH_FIELDS = ('states', 'actions', 'rewards', 'dones', 'log_probs', 'score_theta', 'state_times', 'command_times')


def batch_arrays(batch: Trajectories) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON fields, arrays) of one batch."""
    arrays = {name: getattr(batch, name) for name in _BATCH_FIELDS if getattr(batch, name) is not None}
    return {'source': batch.source, 'policy_version': int(batch.policy_version)}, arrays


def batch_from_arrays(fields: dict, arrays: dict[str, np.ndarray]) -> Trajectories:
    values = {name: arrays.get(name) for name in _BATCH_FIELDS}
    return Trajectories(source=fields['source'], policy_version=int(fields['policy_version']), **values)


def number_runs(numbers) -> list[list[int]]:
    """Increasing integers as [first, last] runs of consecutive ones: a checkpoint refers to
    thousands of kept real batches in a few bytes."""
    runs: list[list[int]] = []
    for n in numbers:
        n = int(n)
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return runs


def numbers_from_runs(runs) -> list[int]:
    return [n for first, last in runs for n in range(int(first), int(last) + 1)]


def real_batch_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / REAL_DIR / f'batch_{index:06d}.npz'


def save_real_batch(run_dir: Path, index: int, batch: Trajectories, meta: dict,
                    phi: Optional[np.ndarray] = None, writer: Optional[WriteBehind] = None) -> Path:
    """Persist real batch number ``index`` (1-based) the moment it arrived, with ``meta``
    (what the run needs to continue as if it had never stopped: the RNG state after it) and
    ``phi``, the policy that collected it (array ``policy_phi``); with ``writer``, encoded here
    and written behind."""
    path = real_batch_path(run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields, arrays = batch_arrays(batch)
    if phi is not None:
        arrays['policy_phi'] = np.asarray(phi, dtype=np.float64)
    data = encode({'batch': fields, 'index': int(index), **meta}, arrays)
    _run_write(writer, str(path), lambda sync: atomic_write_bytes(path, data, sync), [path])
    return path


def load_real_batch(run_dir: Path, index: int) -> Optional[tuple[Trajectories, dict]]:
    """Real batch number ``index`` and its meta (``meta['policy_phi']``: the policy that collected
    it, when saved), or None when it was never collected.
    A batch file that is present but corrupt raises ``CheckpointError``: real data is never
    silently dropped or re-collected."""
    path = real_batch_path(run_dir, index)
    if not path.exists():
        return None
    meta, arrays = read(path)
    if 'policy_phi' in arrays:
        meta['policy_phi'] = arrays['policy_phi']
    return batch_from_arrays(meta['batch'], arrays), meta


PENDING = 'pending.json'


def save_pending_request(run_dir: Path, record: dict, writer: Optional[WriteBehind] = None) -> Path:
    """Persist (atomically) the real-data request about to be sent -- RUN_DIR/real/pending.json,
    one at a time -- so a run that dies while the robot runs it can ask for that result again
    instead of running the robot a second time.  ``record`` is JSON-able and holds ``index``
    (the real batch number it will become)."""
    path = Path(run_dir) / REAL_DIR / PENDING
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(record).encode()
    _run_write(writer, str(path), lambda sync: atomic_write_bytes(path, data, sync), [path])
    return path


def load_pending_request(run_dir: Path) -> Optional[dict]:
    """The last request saved by ``save_pending_request``, or None (never saved, or unreadable:
    a request that cannot be read is only a chance lost, never data lost)."""
    path = Path(run_dir) / REAL_DIR / PENDING
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get('index'), int) else None


HISTORY = 'history.jsonl'


class HistoryLog:
    """RUN_DIR/history.jsonl: the run's iteration records, one JSON object per line.  Saving
    appends only the records not yet written (constant cost per iteration, where rewriting the
    whole history made each checkpoint grow with the run)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / HISTORY
        self.written: Optional[int] = None      # lines known to be in the file (None: not checked yet)
        self.base = 0                           # lines that belong to this run: those a checkpoint counted

    def read(self, count: int) -> list[dict]:
        """The first ``count`` records; fewer in the file is a ``CheckpointError``."""
        records = []
        try:
            with open(self.path, 'rb') as stream:
                for number, line in enumerate(stream, start=1):
                    if len(records) == count:
                        break
                    if not line.endswith(b'\n'):
                        break                   # a torn last line: beyond what any checkpoint counts
                    try:
                        records.append(json.loads(line))
                    except ValueError as err:
                        raise CheckpointError(f'{self.path}, line {number}: not a JSON record ({err})') from None
        except FileNotFoundError:
            pass
        if len(records) < count:
            raise CheckpointError(f'{self.path} holds {len(records)} complete iteration records; the checkpoint '
                                  f'counts {count}')
        self.base = count
        return records

    def sync(self, records: list, encode=lambda record: record, writer: Optional[WriteBehind] = None) -> None:
        """Make the file hold exactly ``records`` (``encode(record)``: a JSON-able dict): the
        first call cuts it to the lines the loaded checkpoint counted (``read``; none for a new
        run) -- a crashed save may have left more --, every call appends the missing tail (only
        the tail is encoded, here), flushed and fsync'd (with ``writer``: behind)."""
        if (self.written is None or self.written > len(records)) and writer is not None:
            writer.flush()                      # the cut follows every append queued before it
        if self.written is None:
            self.written = self._truncate_to(min(self.base, len(records)))
        elif self.written > len(records):
            self.written = self._truncate_to(len(records))
        if self.written == len(records):
            return
        tail = b''.join(json.dumps(encode(record)).encode() + b'\n' for record in records[self.written:])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first = self.written == 0
        _run_write(writer, str(self.path), lambda sync: self._append(tail, first, sync), [self.path])
        self.written = len(records)

    def _append(self, tail: bytes, first: bool, sync: bool = True) -> None:
        with open(self.path, 'ab') as stream:
            stream.write(tail)
            stream.flush()
            if sync:
                os.fsync(stream.fileno())
        if first and sync:
            _fsync_dir(self.path.parent)

    def _truncate_to(self, count: int) -> int:
        """Cut the file after its first ``count`` complete lines; returns the lines kept."""
        kept, offset = 0, 0
        try:
            with open(self.path, 'rb') as stream:
                for line in stream:
                    if kept == count or not line.endswith(b'\n'):
                        break
                    kept, offset = kept + 1, offset + len(line)
            with open(self.path, 'r+b') as stream:
                stream.truncate(offset)
                stream.flush()
                os.fsync(stream.fileno())
        except FileNotFoundError:
            return 0
        return kept
