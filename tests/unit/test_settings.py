"""Settings read from the environment (contract §4).

The rules under test: every numeric variable falls back to its default when it is missing,
unparsable, zero or negative (as in the Tandem engine the lifecycle comes from); the
restart-recovery policy is an enumeration whose bad value stops the operator with a message
that names the variable; ``TANDEM_DISABLE_STALE_AUTO_RESUME`` switches auto-resume off
whatever its value.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tandem_operator.api.settings import Settings, SettingsError

# variable → (Settings attribute, contract default)
NUMERIC: dict[str, tuple[str, int]] = {
    "TANDEM_APPROVAL_GATE_STALE_AFTER_MS": ("approval_gate_stale_after_ms", 86_400_000),
    "TANDEM_STALE_AUTO_RESUME_WINDOW_MS": ("stale_auto_resume_window_ms", 1_200_000),
    "TANDEM_STALE_AUTO_RESUME_MAX_ATTEMPTS": ("stale_auto_resume_max_attempts", 2),
    "TANDEM_STALE_RUNNING_MS": ("stale_running_ms", 600_000),
    "TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS": ("scheduler_max_concurrent_runs", 8),
    "TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS": ("lifecycle_timer_interval_seconds", 30),
    "TANDEM_LIFECYCLE_HISTORY_LIMIT": ("lifecycle_history_limit", 200),
}


def test_an_empty_environment_gives_the_contract_defaults() -> None:
    settings = Settings.from_env({})
    for attribute, default in NUMERIC.values():
        assert getattr(settings, attribute) == default, attribute
    assert settings.restart_recovery == "fail"
    assert settings.stale_auto_resume_disabled is False
    assert settings.token_cost_per_1k_usd == Decimal(0)
    assert settings == Settings()


@pytest.mark.parametrize("variable", sorted(NUMERIC))
def test_a_positive_integer_is_taken(variable: str) -> None:
    attribute, _ = NUMERIC[variable]
    assert getattr(Settings.from_env({variable: "4321"}), attribute) == 4321
    assert getattr(Settings.from_env({variable: "  17 "}), attribute) == 17


@pytest.mark.parametrize("variable", sorted(NUMERIC))
@pytest.mark.parametrize("raw", ["", "   ", "abc", "1.5", "12ms", "0", "-1", "-600000"])
def test_an_unusable_number_means_the_default(variable: str, raw: str) -> None:
    attribute, default = NUMERIC[variable]
    assert getattr(Settings.from_env({variable: raw}), attribute) == default


def test_one_bad_number_leaves_the_others_alone() -> None:
    settings = Settings.from_env(
        {"TANDEM_STALE_RUNNING_MS": "zero", "TANDEM_LIFECYCLE_HISTORY_LIMIT": "5"}
    )
    assert settings.stale_running_ms == 600_000
    assert settings.lifecycle_history_limit == 5


@pytest.mark.parametrize(
    ("raw", "policy"), [("fail", "fail"), ("requeue", "requeue"), ("", "fail")]
)
def test_restart_recovery_accepts_its_two_policies(raw: str, policy: str) -> None:
    assert Settings.from_env({"TANDEM_RESTART_RECOVERY": raw}).restart_recovery == policy


@pytest.mark.parametrize("raw", ["bogus", "Requeue", "FAIL", "retry", "0"])
def test_a_bad_restart_recovery_stops_the_operator_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="TANDEM_RESTART_RECOVERY") as caught:
        Settings.from_env({"TANDEM_RESTART_RECOVERY": raw})
    assert repr(raw) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("raw", ["1", "true", "0", "false", "no", ""])
def test_any_value_of_disable_stale_auto_resume_turns_it_off(raw: str) -> None:
    settings = Settings.from_env({"TANDEM_DISABLE_STALE_AUTO_RESUME": raw})
    assert settings.stale_auto_resume_disabled is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.002", Decimal("0.002")),
        ("1", Decimal(1)),
        ("", Decimal(0)),
        ("cheap", Decimal(0)),
        ("-0.5", Decimal(0)),
        ("0", Decimal(0)),
        ("NaN", Decimal(0)),
        ("Infinity", Decimal(0)),
    ],
)
def test_token_cost_is_a_positive_decimal_or_zero(raw: str, expected: Decimal) -> None:
    cost = Settings.from_env({"TANDEM_TOKEN_COST_PER_1K_USD": raw}).token_cost_per_1k_usd
    assert cost == expected


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_STALE_RUNNING_MS", "3000")
    monkeypatch.setenv("TANDEM_RESTART_RECOVERY", "requeue")
    monkeypatch.delenv("TANDEM_DISABLE_STALE_AUTO_RESUME", raising=False)
    settings = Settings.from_env()
    assert settings.stale_running_ms == 3000
    assert settings.restart_recovery == "requeue"
    assert settings.stale_auto_resume_disabled is False


# B20b: unlike the others, the finished-run TTL has no number for a default: unset keeps runs.


def test_finished_run_ttl_is_unset_by_default() -> None:
    assert Settings.from_env({}).finished_run_ttl_seconds is None


@pytest.mark.parametrize(("raw", "ttl"), [("86400", 86_400), (" 60 ", 60), ("1", 1)])
def test_a_positive_finished_run_ttl_is_taken(raw: str, ttl: int) -> None:
    settings = Settings.from_env({"TANDEM_FINISHED_RUN_TTL_SECONDS": raw})
    assert settings.finished_run_ttl_seconds == ttl


@pytest.mark.parametrize("raw", ["", "   ", "abc", "1.5", "1d", "0", "-1"])
def test_an_unusable_finished_run_ttl_keeps_finished_runs(raw: str) -> None:
    settings = Settings.from_env({"TANDEM_FINISHED_RUN_TTL_SECONDS": raw})
    assert settings.finished_run_ttl_seconds is None
