"""
User errors in one line, the checked reads that raise them, and atomic writes.

A problem the user can fix (a missing or corrupt file, a bad flag) is a UserError: a script that
called exit_on_user_error() prints it as `error: ...` on stderr and exits with status 2, no
traceback. A bug in rank1 itself still raises, with its traceback. Every file rank1 reads goes
through a reader here that names the file, and the line or tensor, when it fails.
"""
import json
import os
import sys


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


def exit_on_user_error():
    """Called at the top of every script's __main__: an uncaught UserError ends the program as
    user_exit does, one line and status 2; any other exception (a bug) keeps its traceback."""
    default = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError):
            raise user_exit(value)  # SystemExit raised in the hook: the interpreter exits with it
        default(kind, value, tb)
    if not getattr(sys.excepthook, "rank1", False):
        hook.rank1 = True
        sys.excepthook = hook


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


def write_atomic(path, write):
    """write(tmp) writes the file under a temporary name, then one rename puts it in place: a
    reader never sees half a file, and a failed write leaves the old one whole."""
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def write_json(path, obj):
    """obj as indented JSON at path, written atomically (write_atomic)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomic(path, write)
