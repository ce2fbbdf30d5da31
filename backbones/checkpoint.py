"""Reading MambaOut checkpoints: the official release, timm's, and mmdet/mmseg ones.

Two key layouts exist. The backbone uses timm's (``stem``, ``stages.i.downsample``,
``stages.i.blocks.j``); the official release's (``downsample_layers.0`` = stem,
``downsample_layers.i``, ``stages.i.j``) is converted here and nowhere else, by timm's ``checkpoint_filter_fn``.

A checkpoint is named by a local path, an http(s) URL (downloaded once into torch's hub cache,
``$TORCH_HOME/hub/checkpoints``) or a Hugging Face hub name (``timm/mambaout_tiny.in1k``,
``hf-hub:timm/mambaout_tiny``; through ``huggingface_hub``'s cache, so ``HF_HUB_OFFLINE``, ``HF_HOME``,
``HF_HUB_CACHE`` and ``HF_ENDPOINT`` apply). A download that fails is one :class:`CheckpointDownloadError`
saying where to put the file by hand. A URL is downloaded once per node: in a distributed run the first rank
of each node downloads while the others wait (a failure is the same error on every rank), and separate
processes sharing a cache take turns through a file lock in it.

Files are read with weights-only unpickling (or as ``.safetensors``): a checkpoint from the internet
cannot run code while it loads. A file that cannot be read at all (a download cut short, an error page saved
as a checkpoint) is a :class:`CheckpointDamagedError` naming the file on disk and how to replace it.
"""
import http.client
import logging
import os
import pickle
import re
import threading
import uuid
import zipfile
from collections import OrderedDict
from typing import Dict, Optional
from urllib.parse import urlparse

import torch
from filelock import FileLock  # a dependency of torch and of huggingface_hub
from mmengine.dist import all_gather_object, get_dist_info, get_local_rank
from timm.models.mambaout import checkpoint_filter_fn

# Keys of the classification model that a detection/segmentation backbone does not have (after timm's
# filter, which moves the official final ``norm.`` under ``head.``).
_CLASSIFIER_KEY = re.compile(r'^(head|norm)\.')
_WRAPPER_KEYS = ('state_dict', 'model', 'module')
_SHOWN_KEYS = 8

# timm spells hub names ``hf-hub:org/name`` and also accepts ``hf_hub:``; a bare ``timm/name`` is its hf_hub_id.
_HUB_PREFIXES = ('hf-hub:', 'hf_hub:')
_TIMM_ORG = 'timm/'
# A bare ``timm/...`` ending like a file is a (missing) local path, not a hub name: timm's tags never end so.
_CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.ckpt', '.tar')
# What a hub repo holds, in the order timm reads it: safetensors first (no unpickling at all).
_HUB_FILES = ('model.safetensors', 'pytorch_model.bin')
_OVERRIDE = '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file'
# Where a file that _read_file reads came from: what a damaged one needs is said accordingly.
_TORCH_CACHE = "torch's hub cache"
_HUB_CACHE = "huggingface_hub's cache"
_JUST_DOWNLOADED = 'a download just made'
# How torch.save's legacy (pre-zip) format begins: the pickled magic number, in whichever protocol it was saved.
_LEGACY_HEADERS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p)
                        for p in range(2, pickle.HIGHEST_PROTOCOL + 1))
# While the first rank of a node downloads, the ranks meet this often rather than waiting in one collective: a
# download can outlast the process group's timeout (NCCL's is 10 minutes).
_POLL_SECONDS = 1.0
_DOWNLOADING = 'downloading'


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the MambaOut it is loaded into."""


class CheckpointDamagedError(CheckpointMismatchError):
    """A checkpoint file cannot be read at all: truncated (a download cut short), or not a checkpoint.

    The message names the file on disk and the fix: delete it from its cache so that it is downloaded again, or
    give another file. A :class:`CheckpointMismatchError`, as the unreadable files that were reported as such.
    """


class CheckpointDownloadError(OSError):
    """A checkpoint URL or hub name could not be downloaded, nor found in its cache.

    An ``OSError``, like the ``URLError``/``huggingface_hub`` errors it replaces and the ``FileNotFoundError`` of a
    missing local file, so that code catching I/O failures around weight loading keeps working. The message names
    the checkpoint, the cause in one line, the cache path where the file can be put by hand and the override.
    """


def read_checkpoint(path_or_url: str) -> dict:
    """Read a checkpoint given as a local file, an http(s) URL or a Hugging Face hub name.

    Args:
        path_or_url: a ``.pth``/``.pt``/``.bin`` (weights-only unpickling) or ``.safetensors`` file; an http(s)
            URL of one (downloaded once into torch's hub cache, then read from there); or a hub name,
            ``timm/<name>[.<tag>]``, ``hf-hub:<org>/<repo>`` or ``hf_hub:<org>/<repo>``, optionally ``@revision``
            (see :func:`resolve_hub_name`). An existing local file always wins over a hub name.

    Returns:
        The raw checkpoint, as saved (possibly wrapped in ``state_dict``/``model``).

    Raises:
        CheckpointDownloadError: the URL or hub file could not be downloaded and is not in its cache.
        FileNotFoundError: a local path that does not exist.
        CheckpointDamagedError: the file (local, or in a cache) is truncated or not a checkpoint at all.
        CheckpointMismatchError: the file holds more than plain tensors (weights-only unpickling refused it).
    """
    if path_or_url.startswith(('http://', 'https://')):
        return _read_url(path_or_url)
    path = os.path.expanduser(path_or_url)
    if os.path.isfile(path):
        return _read_file(path, path_or_url)
    hub_id = resolve_hub_name(path_or_url)
    if hub_id is not None:
        return _read_file(_download_from_hub(path_or_url, hub_id), path_or_url, _HUB_CACHE)
    raise FileNotFoundError(f'MambaOut checkpoint not found: {path_or_url!r}. Give a local file, an http(s) URL '
                            'of an official (mambaout_*.pth) or timm checkpoint, or a hub name such as '
                            "'timm/mambaout_tiny.in1k' or 'hf-hub:timm/mambaout_tiny'.")


def _read_file(path: str, shown_name: str, source: Optional[str] = None) -> dict:
    """Read a local ``.safetensors`` file, or any other one with weights-only unpickling.

    Args:
        path: the file on disk.
        shown_name: the checkpoint as the user gave it (a path, URL or hub name), for the messages.
        source: where the file came from, for the fix that a damaged file needs: ``_TORCH_CACHE``, ``_HUB_CACHE``,
            ``_JUST_DOWNLOADED``, or None for a file the user gave.

    Raises:
        CheckpointDamagedError: the file cannot be read at all (truncated, or not a checkpoint).
        CheckpointMismatchError: a whole checkpoint that holds more than plain tensors.
    """
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu')
        except Exception as err:  # safetensors holds tensors only: a file it cannot read is damaged
            raise CheckpointDamagedError(_damaged_message(path, shown_name, source, err)) from None
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle errors come in many types; say what happened in one line
        if not _is_whole_torch_file(path, err):
            raise CheckpointDamagedError(_damaged_message(path, shown_name, source, err)) from None
        on_disk = '' if path == shown_name else f' ({path})'
        raise CheckpointMismatchError(
            f'Could not read {shown_name!r}{on_disk} with weights-only unpickling ({_one_line(err)}). Only plain '
            'tensors are accepted; if you trust the file, load it with torch.load(..., weights_only=False) and '
            f'torch.save its state dict (a dict of tensors) to a new file, then give that: {_OVERRIDE}') from None


def _is_whole_torch_file(path: str, err: Exception) -> bool:
    """Whether ``path`` is a complete ``torch.save`` file, so that ``err`` is weights-only unpickling refusing its
    contents rather than a damaged file: weights-only loading reports both with the same exception types.

    A zip archive (torch's format since 1.6) is whole when it holds a ``data.pkl`` and every member passes its CRC
    check; a cut-short one has lost its central directory, which is written last. A legacy file is whole when it
    begins with torch's magic number and unpickling did not run out of data.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                has_pickle = any(name.rpartition('/')[2] == 'data.pkl' for name in archive.namelist())
                return has_pickle and archive.testzip() is None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return False
    with open(path, 'rb') as file:
        head = file.read(max(len(header) for header in _LEGACY_HEADERS))
    return head.startswith(_LEGACY_HEADERS) and not isinstance(err, EOFError) and 'EOF' not in str(err)


def _damaged_message(path: str, shown_name: str, source: Optional[str], err: Exception) -> str:
    """What is damaged, where it is on disk, and how to replace it (see :func:`_read_file` for ``source``)."""
    what = f'truncated, or not a readable checkpoint ({_one_line(err)})'
    if source is None:
        return f'The MambaOut checkpoint {path} is damaged: {what}. Give another file: {_OVERRIDE}'
    if source == _JUST_DOWNLOADED:
        return (f'The download of the MambaOut checkpoint {shown_name!r} is damaged: {what}. It was removed again: '
                'if the download was cut short, running again downloads it anew; or give a local file: '
                f'{_OVERRIDE}')
    # huggingface_hub's snapshot files are links to its blobs: the blob is the file to delete
    on_disk = os.path.realpath(path)
    linked = f' (linked from {path})' if on_disk != os.path.abspath(path) else ''
    return (f'The MambaOut checkpoint {shown_name!r} in {source} is damaged: {on_disk}{linked} is {what}. Delete '
            f'that file so that it is downloaded again, or give another file: {_OVERRIDE}')


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(err).strip()
    return f'{type(err).__name__}: {text.splitlines()[0]}' if text else type(err).__name__


def torch_hub_cache_path(url: str) -> str:
    """Where torch's hub keeps the download of ``url``: ``$TORCH_HOME/hub/checkpoints/<file name in the URL>``.

    The same path as :func:`torch.hub.load_state_dict_from_url`, so both share one cache.
    """
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urlparse(url).path))


def _read_url(url: str) -> dict:
    """Read the checkpoint of ``url`` from torch's hub cache, downloading it there first (once per node) if needed."""
    cached = torch_hub_cache_path(url)
    if not os.path.basename(cached):
        raise CheckpointDownloadError(f'The MambaOut checkpoint URL {url!r} names no file (its path ends with "/"), '
                                      f'so it has no place in torch\'s hub cache. Give a local file: {_OVERRIDE}')
    checkpoint = _fetch_once_per_node(url, cached)
    return checkpoint if checkpoint is not None else _read_file(cached, url, _TORCH_CACHE)


def _fetch_once_per_node(url: str, cached: str) -> Optional[dict]:
    """Put ``url`` into the cache at ``cached``, downloading it once per node; its checkpoint if read on the way.

    Outside a distributed run (or with one process) this is :func:`_fetch_into_cache`, whose file lock lets
    separate processes sharing the cache take turns: the first downloads, the others find the file. In a
    distributed run every rank must call this, as every rank runs the model's ``init_weights`` under the Runner
    (mmengine's ``load_from_http`` asks the same): the first rank of each node downloads in a thread while all
    ranks meet every ``_POLL_SECONDS`` until each node's download has ended; if one failed, every rank raises its
    error. A rank whose cache its node's first rank did not fill (a cache of its own) then downloads by itself.
    """
    rank, world_size = get_dist_info()
    if world_size == 1:
        return _fetch_into_cache(url, cached)
    outcome = {}
    downloader = None
    if _local_rank() == 0:
        downloader = threading.Thread(target=_fetch_into, args=(outcome, url, cached), daemon=True,
                                      name='mambaout-checkpoint-download')
        downloader.start()
    while True:
        if downloader is not None:
            downloader.join(_POLL_SECONDS)
        status = _DOWNLOADING if downloader is not None and downloader.is_alive() else outcome.get('shared_error')
        statuses = all_gather_object(status)
        if _DOWNLOADING not in statuses:
            break
    failed = next((i for i, status in enumerate(statuses) if status is not None), None)
    if failed == rank:
        raise outcome['error']  # this rank's own, with its traceback
    if failed is not None:
        raise statuses[failed] from None
    if downloader is None and not os.path.isfile(cached):
        return _fetch_into_cache(url, cached)
    return outcome.get('checkpoint')


def _local_rank() -> int:
    """This process's rank on its node: from mmengine's local process group when one was made
    (``init_local_group``), else ``LOCAL_RANK`` (set by torchrun and by mmengine's slurm and MPI launchers), else
    the global rank (then only rank 0 downloads first)."""
    try:
        return get_local_rank()
    except RuntimeError:  # no local process group: mmengine makes one only on request
        return int(os.environ.get('LOCAL_RANK', get_dist_info()[0]))


def _fetch_into(outcome: dict, url: str, cached: str) -> None:
    """:func:`_fetch_into_cache` in a thread: its checkpoint, or its error and a copy that pickles, into
    ``outcome``."""
    try:
        outcome['checkpoint'] = _fetch_into_cache(url, cached)
    except Exception as err:  # every failure must reach the waiting ranks, or they would wait forever
        outcome['error'] = err
        try:
            pickle.dumps(err)
            outcome['shared_error'] = err
        except Exception:  # an exception that does not pickle travels as its type and message
            outcome['shared_error'] = RuntimeError(_one_line(err))


def _fetch_into_cache(url: str, cached: str) -> Optional[dict]:
    """Download ``url`` to ``cached`` unless it is there; the checkpoint if it was downloaded (and so read) now.

    Under a file lock in the cache (``.locks/<file>.lock``), so that processes sharing it download once: the
    others wait, then find the file. torch's ``download_url_to_file`` writes to ``<dst>.<uuid>.partial`` and moves
    it to ``dst`` only after the last byte, deleting the partial file on any error or interrupt; we rely on that.
    It cannot notice a server that closes the connection early (Python's http.client then just ends the stream), so
    ``dst`` is a staging name and the file moves to the cache path only once it has been read as a whole
    checkpoint. A whole one that weights-only unpickling refuses moves there too, where its error names it.
    """
    if os.path.isfile(cached):  # no lock needed, nor a writable cache
        return None
    lock_dir = os.path.join(os.path.dirname(cached), '.locks')
    try:
        os.makedirs(lock_dir, exist_ok=True)
        lock = FileLock(os.path.join(lock_dir, os.path.basename(cached) + '.lock'))
        lock.acquire()
    except OSError as err:
        raise CheckpointDownloadError(_download_failure_message(url, cached, err)) from None
    try:
        if os.path.isfile(cached):  # another process downloaded it while this one waited for the lock
            return None
        # Unique per process, should the lock not hold on this filesystem; the extension says how to read the file.
        stem, extension = os.path.splitext(cached)
        staged = f'{stem}.{uuid.uuid4().hex}.unverified{extension}'
        try:
            _download_url(url, cached, staged)
            try:
                checkpoint = _read_file(staged, url, _JUST_DOWNLOADED)
            except CheckpointDamagedError:
                raise
            except CheckpointMismatchError:  # whole but refused: kept, so that the refusal can name it in the cache
                checkpoint = None
            os.replace(staged, cached)
            return checkpoint
        finally:
            if os.path.exists(staged):
                os.remove(staged)
    finally:
        lock.release()


def _download_url(url: str, cached: str, staged: str) -> None:
    """Download ``url`` to ``staged`` with a progress bar; any failure is a :class:`CheckpointDownloadError`."""
    try:
        torch.hub.download_url_to_file(url, staged, progress=True)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError/HTTPError/timeouts are OSErrors
        raise CheckpointDownloadError(_download_failure_message(url, cached, err)) from None


def _download_failure_message(url: str, cached: str, err: Exception) -> str:
    """The URL, the cause in one line, the cache path where the file can be put by hand, and the override."""
    return (f'Could not download the MambaOut checkpoint {url!r} ({_one_line(err)}).\n'
            f'  Put the file by hand at {cached} (torch\'s hub cache, under TORCH_HOME),\n'
            f'  or give a local file: {_OVERRIDE}')


def resolve_hub_name(name: str) -> Optional[str]:
    """The Hugging Face hub repo of a checkpoint name, or None if ``name`` is not a hub name.

    Hub names are ``hf-hub:<org>/<repo>`` and ``hf_hub:<org>/<repo>`` (timm's spellings) and a bare
    ``timm/<model>[.<tag>]`` (timm's ``hf_hub_id``), each optionally ending in ``@<revision>``. A timm name without a
    pretrained tag resolves, through timm's pretrained configs and without network access, to the default tag:
    ``timm/mambaout_tiny`` -> ``timm/mambaout_tiny.in1k``.

    Args:
        name: the ``checkpoint`` of ``init_cfg``.

    Returns:
        ``<org>/<repo>[@<revision>]``, or None.
    """
    prefix = next((p for p in _HUB_PREFIXES if name.startswith(p)), None)
    if prefix is not None:
        repo = name[len(prefix):]
    elif name.startswith(_TIMM_ORG) and '/' not in name[len(_TIMM_ORG):] and not name.endswith(_CHECKPOINT_SUFFIXES):
        repo = name
    else:
        return None
    repo_id, at, revision = repo.partition('@')
    return _with_timm_default_tag(repo_id) + at + revision


def _with_timm_default_tag(repo_id: str) -> str:
    """``timm/<model>`` -> timm's ``hf_hub_id`` of the model's default pretrained tag; any other repo unchanged."""
    model = repo_id[len(_TIMM_ORG):]
    if not repo_id.startswith(_TIMM_ORG) or not model or '.' in model:
        return repo_id
    from timm.models import get_pretrained_cfg  # timm's model registry: a local table, no network
    pretrained_cfg = get_pretrained_cfg(model)
    return pretrained_cfg.hf_hub_id if pretrained_cfg is not None and pretrained_cfg.hf_hub_id else repo_id


def _download_from_hub(name: str, hub_id: str) -> str:
    """The local path of a hub repo's weights, downloaded into huggingface_hub's cache if not there yet.

    Args:
        name: the checkpoint as the user wrote it, for the error message.
        hub_id: its repo, ``<org>/<repo>[@<revision>]`` (see :func:`resolve_hub_name`).

    Raises:
        CheckpointDownloadError: neither weights file can be downloaded nor is in the cache.
    """
    from huggingface_hub.errors import HFValidationError
    repo_id, _, revision = hub_id.partition('@')
    try:
        return _hub_weights_file(repo_id, revision or None)
    except HFValidationError as err:  # raised before any download: there is no cache folder to name
        raise CheckpointDownloadError(f'{name!r} is not a hub name ({_one_line(err)}). Hub names look like '
                                      f"'timm/mambaout_tiny.in1k' or 'hf-hub:<org>/<repo>'.") from None
    # hf_hub_download's errors come from huggingface_hub, its HTTP client and hf_xet, whose classes change between
    # versions; each is a failed download here, reported with its type and message.
    except Exception as err:
        raise CheckpointDownloadError(_hub_failure_message(name, repo_id, revision or 'main', err)) from None


def _hub_weights_file(repo_id: str, revision: Optional[str]) -> str:
    """``model.safetensors`` of the repo, else its ``pytorch_model.bin``, as timm looks for them.

    ``hf_hub_download`` handles the cache, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_ENDPOINT``.
    timm's ``load_state_dict_from_hf`` tries the same two files but unpickles a ``.bin`` with ``argparse.Namespace``
    allowed, looser than our weights-only reading; so we take only the path and read the file ourselves.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    safetensors_file, pickle_file = _HUB_FILES
    try:
        return hf_hub_download(repo_id, safetensors_file, revision=revision)
    except LocalEntryNotFoundError as unreachable:  # offline or hub unreachable, and not in the cache
        try:  # only the cache can still help: asking the hub again would repeat huggingface_hub's ~20 s of retries
            return hf_hub_download(repo_id, pickle_file, revision=revision, local_files_only=True)
        except LocalEntryNotFoundError:
            raise unreachable  # its cause (offline mode, a connection error) is the one to report
    except EntryNotFoundError:  # the repo has no safetensors
        return hf_hub_download(repo_id, pickle_file, revision=revision)


def _hub_failure_message(name: str, repo_id: str, revision: str, err: Exception) -> str:
    """What failed and why, where huggingface_hub's cache is, and the two ways around it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.file_download import repo_folder_name
    if constants.is_offline_mode() and isinstance(err, LocalEntryNotFoundError):
        cause = 'HF_HUB_OFFLINE=1 and not in the cache'
    else:  # huggingface_hub's own message is generic; the error under it says what the network did
        cause = _one_line(err) + (f'; caused by {_one_line(err.__cause__)}' if err.__cause__ is not None else '')
    shown_repo = '' if repo_id in name else f' (hub repo {repo_id})'
    weights_file = _HUB_FILES[0]
    return (f'Could not get the MambaOut checkpoint {name!r}{shown_repo}: neither {" nor ".join(_HUB_FILES)} could '
            f'be downloaded ({cause}).\n'
            f'  Fill huggingface_hub\'s cache {constants.HF_HUB_CACHE} (set by HF_HUB_CACHE or HF_HOME) on a machine '
            f'with internet (`hf download {repo_id} {weights_file}`) and copy its '
            f'{repo_folder_name(repo_id=repo_id, repo_type="model")} folder here,\n'
            f'  or download {weights_file} by hand from {constants.ENDPOINT}/{repo_id}/tree/{revision} and give it: '
            f'--cfg-options model.backbone.init_cfg.checkpoint=/path/to/{weights_file}')


def unwrap_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Take the backbone's tensors out of a raw, wrapped (``state_dict``/``model``) or detector/segmentor
    checkpoint. ``prefix`` (e.g. ``'backbone.'``) selects a sub-module; a ``backbone.`` prefix is
    found by itself."""
    state = checkpoint
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise CheckpointMismatchError('The checkpoint holds no state dict (expected a dict of tensors, possibly '
                                      f'under {list(_WRAPPER_KEYS)}).')
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        if not state:
            raise CheckpointMismatchError(f'No key of the checkpoint starts with prefix {prefix!r}.')
    return state


def to_backbone_state_dict(checkpoint: dict, prefix: Optional[str] = None):
    """Native (timm-layout) backbone keys of any supported checkpoint, and the classifier keys dropped.

    The official release's layout goes through timm's own ``checkpoint_filter_fn``, which only renames keys (it
    returns timm-layout ones as they are); its ``model`` argument is not read, so none is given.
    """
    state = checkpoint_filter_fn(unwrap_state_dict(checkpoint, prefix), None)
    if not any(k.startswith(('stem.', 'stages.')) for k in state):
        raise CheckpointMismatchError(
            'This is not a MambaOut checkpoint: no key starts with stem./stages. (timm) or downsample_layers. '
            f'(official). First keys: {list(state)[:_SHOWN_KEYS]}.')
    dropped = [k for k in state if _CLASSIFIER_KEY.match(k)]
    for key in dropped:
        del state[key]
    return state, dropped


def _describe(keys, what):
    keys = sorted(keys)
    more = f' (+{len(keys) - _SHOWN_KEYS} more)' if len(keys) > _SHOWN_KEYS else ''
    return f'{what}: {keys[:_SHOWN_KEYS]}{more}'


_UNUSED_MODULE = re.compile(r'^(stages\.\d+|norm\d+)')


def _unused_by(model, key: str) -> bool:
    """Whether ``key`` belongs to a stage that ``model`` does not build, or to the output norm of a stage it
    does not return."""
    stage = re.match(r'^stages\.(\d+)\.', key)
    if stage:
        return int(stage.group(1)) >= len(model.stages)
    out_norm = re.match(r'^norm(\d+)\.', key)
    return bool(out_norm) and int(out_norm.group(1)) not in model.out_indices


def load_pretrained(model, checkpoint: str, prefix: Optional[str] = None,
                    logger: Optional[logging.Logger] = None):
    """Load a checkpoint into a :class:`~backbones.MambaOut`, strictly.

    The classifier head and final norm are dropped (one info line), and so are the stages the model does
    not build (after its last ``out_indices``) and the output norms of stages it does not return (one info
    line); output norms ``norm{i}`` absent from the checkpoint are reported as newly initialised. Anything
    else missing, unexpected or of the wrong shape raises :class:`CheckpointMismatchError` naming the arch
    and the keys at fault.
    """
    logger = logger or logging.getLogger(__name__)
    state, dropped = to_backbone_state_dict(read_checkpoint(checkpoint), prefix)
    unused = [k for k in state if _unused_by(model, k)]
    for key in unused:
        del state[key]
    own = model.state_dict()
    out_norms = {k for k in own if re.match(r'^norm\d+\.', k)}
    missing = set(own) - set(state) - out_norms
    unexpected = set(state) - set(own)
    wrong_shape = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in set(state) & set(own) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [_describe(keys, what) for keys, what in
                    ((missing, 'missing'), (unexpected, 'unexpected'), (wrong_shape, 'wrong shape')) if keys]
        raise CheckpointMismatchError(
            f'{checkpoint!r} does not fit MambaOut arch {model.arch_name!r} (depths {model.arch["depths"]}, dims '
            f'{model.arch["dims"]}). Is it a checkpoint of another variant? ' + '; '.join(problems))
    model.load_state_dict(state, strict=False)
    if dropped:
        logger.info(f'MambaOut: dropped {len(dropped)} classifier keys (head.*, norm.*) from {checkpoint!r}.')
    if unused:
        logger.info(f'MambaOut: dropped {len(unused)} keys of {checkpoint!r} for stages that out_indices '
                    f'{model.out_indices} does not use ({sorted({_UNUSED_MODULE.match(k).group(0) for k in unused})}).')
    fresh = sorted({k.split('.')[0] for k in out_norms - set(state)})
    if fresh:
        logger.info(f'MambaOut: output norms {fresh} are not in {checkpoint!r}; newly initialised.')
    logger.info(f'MambaOut: loaded {len(state)} tensors from {checkpoint!r} into arch {model.arch_name!r}.')
