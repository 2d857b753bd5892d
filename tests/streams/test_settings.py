

def test_per_type_dedup_windows_reach_the_policy_and_a_bad_one_says_what_is_wrong():
    import pytest

    from herald.settings import Settings
    from streams.config import policy_config

    config = policy_config(Settings(dedup_window_by_type="COMMENT=60, SYSTEM=3600"))
    assert config.dedup_window_ms("COMMENT") == 60_000 and config.dedup_window_ms("SYSTEM") == 3_600_000
    assert config.dedup_window_ms("MENTION") == 300_000
    with pytest.raises(ValueError, match="COMMENT60"):
        Settings(dedup_window_by_type="COMMENT60").dedup_windows()
