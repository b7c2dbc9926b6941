"""Run files are UTF-8 with the newlines they were given, whatever the user's locale says."""

import os
import subprocess
import sys
import textwrap


def test_text_is_written_as_utf8_under_an_ascii_locale(tmp_path):
    target = tmp_path / "notes.txt"
    script = textwrap.dedent(
        f"""
        import locale
        from msadkit.utils.atomic import write_text_atomic
        assert locale.getpreferredencoding(False).lower() not in ("utf-8", "utf8"), locale.getpreferredencoding(False)
        write_text_atomic({str(target)!r}, "Zo\\u00eb \\u2713 caf\\u00e9\\r\\nnext\\n")
        """
    )
    # The C locale without UTF-8 coercion: the platform's default text encoding is ASCII here.
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert target.read_bytes() == "Zoë \u2713 caf\u00e9\r\nnext\n".encode("utf-8")


def test_text_is_utf8_when_the_platform_default_encoding_is_ascii(tmp_path, monkeypatch):
    """The same check in-process: a text file opened without an explicit encoding gets ASCII here."""
    from msadkit.utils import atomic
    from msadkit.utils.atomic import write_text_atomic

    real_fdopen = os.fdopen

    def ascii_by_default(fd, mode="r", *args, encoding=None, **kwargs):
        if "b" not in mode and encoding is None:
            encoding = "ascii"
        return real_fdopen(fd, mode, *args, encoding=encoding, **kwargs)

    monkeypatch.setattr(atomic.os, "fdopen", ascii_by_default)
    target = tmp_path / "notes.txt"
    write_text_atomic(target, "Zo\u00eb \u2713\r\nnext\n")
    assert target.read_bytes() == "Zo\u00eb \u2713\r\nnext\n".encode("utf-8")
