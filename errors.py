"""
User errors in one line, the checked reads that raise them, and atomic writes.

A problem the user can fix (a missing or corrupt file, a bad flag) is a UserError: a script that
called exit_on_user_error() prints it as `error: ...` on stderr and exits with status 2, no
traceback. A bug in rank1 itself still raises, with its traceback. Every file rank1 reads goes
through a reader here that names the file, and the line or tensor, when it fails.
"""
import argparse
import json
import math
import os
import signal
import sys
from contextlib import contextmanager


class UserError(ValueError):
    """A problem the user can fix, not a bug in rank1: the message names the file or flag and says
    what is wrong. Library callers (tests, study.py) catch it like any ValueError."""


def user_exit(message):
    """A script's own refusal (a bad flag, a run folder in the way): `error: message` on stderr,
    and the SystemExit to raise, status 2; str() of it is still the message."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    stop = SystemExit(str(message))
    stop.code = 2  # the interpreter exits with .code and prints nothing more
    return stop


def exit_on_user_error(too_big="the batch sizes"):
    """Called at the top of every script's __main__: an uncaught UserError ends the program as
    user_exit does, one line and status 2, and so does running out of memory, naming `too_big`,
    the flags to lower; any other exception (a bug) keeps its traceback."""
    default = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError):
            raise user_exit(value)  # SystemExit raised in the hook: the interpreter exits with it
        if out_of_memory(value):
            raise user_exit(f"out of memory ({str(value).splitlines()[0][:120]}); lower "
                            f"{too_big}")
        default(kind, value, tb)
    if not getattr(sys.excepthook, "rank1", False):
        hook.rank1 = True
        sys.excepthook = hook


def out_of_memory(e):
    """Did an allocation fail: Python's MemoryError, torch's OutOfMemoryError (a GPU), or the CPU
    allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory")?"""
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or
                                         "out of memory" in text.lower())


DEFERRED = dict(now=False, signal=None)  # inside signals_deferred(): a signal waits for its end


def stop_on_signals(after=""):
    """Ctrl-C (SIGINT) and SIGTERM (what `kill` and schedulers send) end a script with one line
    on stderr, "interrupted" or "terminated" and then `after` (a string, or a function that
    returns one when the signal comes), and exit status 128 + the signal (130, 143), not a
    traceback. The SystemExit unwinds the stack, so a script's cleanup (a staging folder
    removed) runs on the way out. Inside signals_deferred() the signal waits for the block's end."""
    def stop(signum, frame):
        if DEFERRED["now"]:
            DEFERRED["signal"] = signum
            return
        what = "interrupted" if signum == signal.SIGINT else "terminated"
        print(f"\n{what}{after() if callable(after) else after}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM take effect at the end of the block, not inside it: a checkpoint's
    write is finished, never cut short (stop_on_signals' handler)."""
    DEFERRED.update(now=True, signal=None)
    try:
        yield
    finally:
        DEFERRED["now"] = False
        if DEFERRED["signal"] is not None:
            signal.raise_signal(DEFERRED["signal"])


def read_json(path):
    """A JSON file, or a UserError that names it and says what is wrong."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                        f"truncated or corrupt?") from None


def jsonl_rows(path):
    """[(line number, row)] of a JSONL file of objects, blank lines skipped. A last line without its
    newline that does not parse is a write cut short: dropped, with a note on stderr. Any other line
    that is not a JSON object is a UserError naming file:line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # a torn line: mid-character
            lines = f.read().split("\n")                      # "" last when the file ends in "\n"
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # the last line, and no newline after it
                print(f"note: {path}:{n}: dropped a torn last line {line[:40]!r} (a write cut "
                      f"short, e.g. by a kill)", file=sys.stderr)
                break
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); the file is "
                            f"damaged: fix or delete that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: a {type(row).__name__}, not a JSON object")
        rows.append((n, row))
    return rows


def open_safetensors(path):
    """safe_open(path) for tensors read one at a time, or a UserError that names the file. The
    header is checked against the file's size here, so a truncated file fails now, not later."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); "
                        f"truncated or corrupt?") from None


def load_safetensors(path):
    """Every tensor of a safetensors file as {name: tensor}, or a UserError that names the file."""
    f = open_safetensors(path)
    return {k: f.get_tensor(k) for k in f.keys()}


# -----------------------------------------------------------------------------
# Numeric flags: argparse types that refuse what makes no sense before any work starts


def number(kind=float, low=None, high=None, above=None):
    """An argparse `type`: a finite int or float (`kind`) >= low (or > above) and <= high. A bad
    value is argparse's one-line error naming the flag, exit 2: `--lr nan` never trains."""
    def convert(text):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} expected, got {text!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"a finite number expected, got {text!r}")
        if (low is not None and x < low) or (above is not None and x <= above) or \
                (high is not None and x > high):
            bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None
                      else "", f"<= {high}" if high is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, "
                                             f"got {text}")
        return x
    convert.__name__ = kind.__name__  # argparse names the type in its message
    return convert


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every script's --help: the module docstring as written, and each flag's default after its
    help ("(default: 10)") unless the help already names it or there is none to name."""

    def _get_help_string(self, action):
        text = action.help or ""
        quiet = action.default is None or action.default is False or \
            action.default == argparse.SUPPRESS or "default" in text
        return text if quiet or action.nargs == 0 else f"{text} (default: %(default)s)"


def no_flags(doc):
    """A self-check takes no flags: --help prints its usage and what it checks, and runs nothing."""
    argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter).parse_args()


def describe(doc):
    """`python FILE.py` for a library file: its usage and what it holds (its docstring), the same
    with --help; it runs nothing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    parser.parse_args()
    parser.print_help()


COUNT = number(int, low=1)          # 1, 2, 3, ...
COUNT0 = number(int, low=0)         # 0 = off / all / default, as each help says
POSITIVE = number(float, above=0)   # > 0, finite
NONNEGATIVE = number(float, low=0)  # >= 0, finite
FRACTION = number(float, low=0, high=1)
SEED = number(int, low=0, high=2 ** 63 - 1)  # torch.manual_seed takes a signed 64-bit integer

# -----------------------------------------------------------------------------
# Writing: atomically (tmp, fsync, rename), and checked before long work starts


def fsync_tree(path):
    """Flush a file, or a folder's files and the folder itself, to the disk: a rename that
    follows then never publishes data that a power cut could still lose."""
    for root, _, files in os.walk(path) if os.path.isdir(path) else [(None, None, [path])]:
        for name in files:
            with open(os.path.join(root, name) if root else name, "rb") as f:
                os.fsync(f.fileno())
        if root:
            fsync_dir(root)


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, write):
    """write(tmp) writes the file under a temporary name; it is flushed to disk and renamed into
    place, so a reader never sees half a file and a failed write (a full disk, a kill) leaves the
    old one whole. A failure is a UserError naming the file."""
    from safetensors import SafetensorError  # it raises its own on a full disk
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        write(tmp)
        fsync_tree(tmp)
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path))
    except (OSError, SafetensorError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = "the previous one is intact" if os.path.exists(path) else "nothing was written"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f"{path}: cannot write it ({reason}); {kept}") from None


def write_json(path, obj):
    """obj as indented JSON at path, written atomically (write_atomic)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomic(path, write)


def write_lines(path, lines):
    """A text file of lines (JSONL), written atomically; its folder is made if missing."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(line + "\n" for line in lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, write)


def check_writable(path, folder=False):
    """Fail now, in one line, if `path` (a file, or with folder=True a folder) cannot be written,
    rather than after the long work that would fill it: the folder is made if missing, and a
    file is created and removed in it."""
    where = path if folder else os.path.dirname(os.path.abspath(path))
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: a file, not a folder")
    if not folder and os.path.isdir(path):
        raise UserError(f"{path}: a folder, not a file")
    probe = os.path.join(where, f".rank1_write_check_{os.getpid()}")
    try:
        os.makedirs(where, exist_ok=True)
        with open(probe, "w") as f:
            f.write("x")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror or e})") from None


if __name__ == "__main__":
    describe(__doc__)
