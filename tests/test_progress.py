"""Progress bars: drawn on a terminal only, so a log file keeps one line per stage; forced on or off by
SEGKIT_PROGRESS."""

from segkit.progress import bar


def test_no_bar_frames_in_a_non_interactive_log(capsys, monkeypatch):
    monkeypatch.delenv("SEGKIT_PROGRESS", raising=False)
    assert list(bar(range(5), "predict: test")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # captured output is not a terminal


def test_bars_forced_on_and_off(capsys, monkeypatch):
    monkeypatch.setenv("SEGKIT_PROGRESS", "1")
    assert sum(bar(range(5), "tune: summary tables")) == 10
    assert "tune: summary tables" in capsys.readouterr().err
    monkeypatch.setenv("SEGKIT_PROGRESS", "0")
    assert sum(bar(range(5), "tune: summary tables")) == 10
    assert capsys.readouterr().err == ""
