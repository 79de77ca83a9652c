from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.eventtime import BoundaryClock, DaysOff, crossed, floor, zone_country
from shared.settings import Settings

SEOUL = ZoneInfo("Asia/Seoul")


def kst(*a):
    return datetime(*a, tzinfo=SEOUL).astimezone(UTC)


@pytest.mark.parametrize("prev,cur,period,expected", [
    (kst(2026, 1, 1, 9, 59), kst(2026, 1, 1, 10, 0), "hour", kst(2026, 1, 1, 10, 0)),
    (kst(2026, 1, 1, 10, 0), kst(2026, 1, 1, 10, 1), "hour", None),
    (kst(2026, 1, 1, 10, 9), kst(2026, 1, 1, 10, 10), "10min", kst(2026, 1, 1, 10, 10)),
    (kst(2026, 1, 1, 10, 10), kst(2026, 1, 1, 10, 19), "10min", None),
    (kst(2026, 1, 31, 23, 59), kst(2026, 2, 1, 0, 0), "day", kst(2026, 2, 1)),
    (kst(2026, 1, 31, 23, 59), kst(2026, 2, 1, 0, 0), "month", kst(2026, 2, 1)),
    (kst(2026, 1, 31, 23, 59), kst(2026, 2, 1, 0, 0), "quarter", None),
    (kst(2026, 3, 31, 23, 59), kst(2026, 4, 1, 0, 0), "quarter", kst(2026, 4, 1)),
    (kst(2025, 12, 31, 23, 59), kst(2026, 1, 1, 0, 0), "year", kst(2026, 1, 1)),
    (kst(2025, 12, 31, 23, 59), kst(2026, 1, 1, 0, 0), "quarter", kst(2026, 1, 1)),
    (kst(2028, 2, 28, 23, 59), kst(2028, 2, 29, 0, 0), "day", kst(2028, 2, 29)),  # leap day
    (kst(2028, 2, 29, 23, 59), kst(2028, 3, 1, 0, 0), "day", kst(2028, 3, 1)),
    (kst(2028, 2, 29, 23, 59), kst(2028, 3, 1, 0, 0), "month", kst(2028, 3, 1)),
    (kst(2026, 1, 1, 9, 0, 30), kst(2026, 1, 1, 9, 1, 0), "minute", kst(2026, 1, 1, 9, 1)),
    (None, kst(2026, 1, 1, 10, 0), "hour", None),
    (kst(2026, 1, 1, 10, 5), kst(2026, 1, 1, 10, 0), "hour", None),  # out of order
    (kst(2026, 1, 1, 7, 0), kst(2026, 1, 1, 10, 30), "hour", kst(2026, 1, 1, 10, 0)),  # gap: the latest
])
def test_crossed(prev, cur, period, expected):
    assert crossed(prev, cur, period, SEOUL) == expected


def test_day_is_local_not_utc():
    # 15:00 UTC is 00:00 in Seoul: the local day turns there, not at UTC midnight.
    assert crossed(datetime(2026, 5, 4, 14, 59, tzinfo=UTC), datetime(2026, 5, 4, 15, 0, tzinfo=UTC), "day", SEOUL)
    assert crossed(datetime(2026, 5, 4, 23, 59, tzinfo=UTC), datetime(2026, 5, 5, 0, 0, tzinfo=UTC), "day", SEOUL) is None


def test_dst_zone_day_boundary():
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29 is the spring-forward day in Berlin: midnight is still 23:00 UTC the day before.
    assert floor(datetime(2026, 3, 29, 12, tzinfo=UTC), "day", berlin) == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert floor(datetime(2026, 3, 30, 12, tzinfo=UTC), "day", berlin) == datetime(2026, 3, 29, 22, tzinfo=UTC)


def test_week_starts_monday():
    assert floor(kst(2026, 11, 22, 12), "week", SEOUL) == kst(2026, 11, 16)  # a Sunday -> Monday before


def test_clock_per_key():
    c = BoundaryClock(SEOUL)
    t0 = kst(2026, 1, 1, 9, 59)
    assert c.advance(t0, ["hour"], key="a") == {}
    assert c.advance(t0 + timedelta(minutes=1), ["hour", "10min", "day"], key="a") == {
        "hour": kst(2026, 1, 1, 10), "10min": kst(2026, 1, 1, 10)}
    assert c.advance(t0 + timedelta(minutes=1), ["hour"], key="b") == {}  # new key: nothing crossed
    assert c.advance(t0, ["hour"], key="a") == {}  # late reading crosses nothing, keeps last
    assert c.last("a") == t0 + timedelta(minutes=1)


def test_naive_refused():
    with pytest.raises(ValueError):
        floor(datetime(2026, 1, 1), "hour", SEOUL)


def test_days_off_are_weekends_public_holidays_and_listed_dates():
    kr = DaysOff("KR")
    assert kr(date(2026, 9, 25)) and kr(date(2026, 10, 5))  # Chuseok; the substitute for National Foundation Day
    assert kr(date(2026, 9, 27)) and not kr(date(2026, 9, 28))  # a Sunday; an ordinary Monday
    assert kr.holiday(date(2026, 9, 25)) and not kr.holiday(date(2026, 9, 26))  # Chuseok's second day is a Saturday
    plain = DaysOff()
    assert plain(date(2026, 9, 26)) and not plain(date(2026, 9, 25))  # weekends only
    assert DaysOff(None, [date(2026, 9, 28)])(date(2026, 9, 28)) and DaysOff(None, [date(2026, 9, 28)]).has_holidays
    assert not plain.has_holidays and kr.has_holidays
    assert DaysOff("US-CA")(date(2026, 3, 31))  # Cesar Chavez Day: California's, not the federal calendar's
    assert not DaysOff("US")(date(2026, 3, 31))


def test_holidays_setting_auto_follows_the_zone_and_errors_name_it():
    assert zone_country("Asia/Seoul") == "KR" and zone_country("UTC") is None
    assert Settings().calendar.country == "KR"  # the default zone is Asia/Seoul
    assert Settings(timezone="Europe/Berlin").calendar(date(2026, 12, 25))
    assert Settings(timezone="UTC").calendar.country is None
    assert not Settings(holidays="none").calendar(date(2026, 9, 25))
    assert Settings(days_off=["2026-09-28"]).calendar(date(2026, 9, 28))
    for bad, what in (("XX", "country 'XX'"), ("KR-ZZ", "subdivision 'ZZ' of 'KR'")):
        with pytest.raises(ValueError, match=f"holidays\\s+Value error, no public-holiday calendar for {what}"):
            Settings(holidays=bad)


def test_days_off_from_aliases_subdivisions_and_long_horizons():
    assert zone_country("ROK") == "KR" and zone_country("Asia/Calcutta") == "IN"  # links to Asia/Seoul, Asia/Kolkata
    assert DaysOff("BE-Flemish").country == "BE-Flemish"  # a subdivision written in mixed case
    assert Settings() == Settings() and Settings().calendar is Settings().calendar  # one calendar per setting
    kr, tz = DaysOff("KR"), ZoneInfo("Asia/Seoul")
    wed = datetime(2026, 9, 23, 12, tzinfo=tz).timestamp()  # Wednesday before Chuseok
    assert not kr.holiday_within(wed, wed + 6 * 3600, tz)
    assert kr.holiday_within(wed, wed + 3 * 86400, tz)  # Thursday Sep 24, two days into the span
    assert not kr.holiday_within(wed + 3 * 86400, wed + 4 * 86400, tz)  # Sat, Sun: weekends, not holidays
