

def test_per_type_dedup_windows_reach_the_policy_and_a_bad_one_says_what_is_wrong():
    import pytest

    from herald.settings import Settings
    from streams.config import policy_config

    config = policy_config(Settings(dedup_window_by_type="COMMENT=60, SYSTEM=3600"))
    assert config.dedup_window_ms("COMMENT") == 60_000 and config.dedup_window_ms("SYSTEM") == 3_600_000
    assert config.dedup_window_ms("MENTION") == 300_000
    with pytest.raises(ValueError, match="COMMENT60"):
        Settings(dedup_window_by_type="COMMENT60").dedup_windows()


def test_a_yes_no_setting_reads_the_usual_spellings_and_refuses_others(monkeypatch):
    import pytest

    from herald.settings import Settings

    for raw, expected in (("0", False), ("false", False), ("Off", False), ("1", True), ("yes", True), ("TRUE", True)):
        monkeypatch.setenv("HERALD_EXACTLY_ONCE", raw)
        assert Settings.from_env().exactly_once is expected
    monkeypatch.setenv("HERALD_EXACTLY_ONCE", "maybe")
    with pytest.raises(ValueError, match="HERALD_EXACTLY_ONCE='maybe': say 1/true/yes/on or 0/false/no/off"):
        Settings.from_env()


def test_exactly_once_is_the_default_and_can_be_turned_off(monkeypatch):
    """A worker that is not told otherwise writes each batch in transactions (fencing a woken zombie)."""
    from herald.settings import Settings

    monkeypatch.delenv("HERALD_EXACTLY_ONCE", raising=False)
    assert Settings.from_env().exactly_once is True and Settings().exactly_once is True
    monkeypatch.setenv("HERALD_EXACTLY_ONCE", "0")
    assert Settings.from_env().exactly_once is False
