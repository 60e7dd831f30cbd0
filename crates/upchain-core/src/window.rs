//! The maintenance window: whether a node may be started now, and when the window next
//! opens. Time zones come from the tz database built into the binary (no files read).

use jiff::civil::Weekday as CivilWeekday;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use upchain_api::{Weekday, WindowSpec};

/// Where `now` falls relative to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Inside a window that closes at this instant.
    Open {
        /// When the current window closes.
        closes_at: Timestamp,
    },
    /// Outside; the next window opens at this instant.
    Closed {
        /// When the next window opens.
        opens_at: Timestamp,
    },
}

fn civil(day: Weekday) -> CivilWeekday {
    match day {
        Weekday::Mon => CivilWeekday::Monday,
        Weekday::Tue => CivilWeekday::Tuesday,
        Weekday::Wed => CivilWeekday::Wednesday,
        Weekday::Thu => CivilWeekday::Thursday,
        Weekday::Fri => CivilWeekday::Friday,
        Weekday::Sat => CivilWeekday::Saturday,
        Weekday::Sun => CivilWeekday::Sunday,
    }
}

/// Where `now` falls. Errors name the field to fix.
pub fn window_state(window: &WindowSpec, now: Timestamp) -> Result<WindowState, String> {
    let zone = TimeZone::get(&window.time_zone).map_err(|_| {
        format!(
            "spec.window.timeZone {:?} is not a known IANA time zone (such as Europe/London \
             or UTC)",
            window.time_zone
        )
    })?;
    let (hour, minute) = window
        .start
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
        .ok_or_else(|| format!("spec.window.start {:?} is not HH:MM", window.start))?;
    let length = std::time::Duration::from(window.duration);
    let length = i64::try_from(length.as_secs()).unwrap_or(i64::MAX);
    let today = now.to_zoned(zone.clone()).date();
    let mut next_open: Option<Timestamp> = None;
    // A window lasts at most a week, so one that is open now opened within the last 8 days.
    for offset in -8..=8 {
        let Ok(day) = today.checked_add(Span::new().days(offset)) else {
            continue;
        };
        if !window.days.is_empty() && !window.days.iter().any(|d| civil(*d) == day.weekday()) {
            continue;
        }
        // A start time skipped by a daylight-saving change opens at the next valid instant.
        let Ok(opens) = day.at(hour, minute, 0, 0).to_zoned(zone.clone()) else {
            continue;
        };
        let opens = opens.timestamp();
        let closes = Timestamp::from_second(opens.as_second().saturating_add(length))
            .unwrap_or(Timestamp::MAX);
        if opens <= now && now < closes {
            return Ok(WindowState::Open { closes_at: closes });
        }
        if opens > now && next_open.is_none_or(|n| opens < n) {
            next_open = Some(opens);
        }
    }
    next_open
        .map(|opens_at| WindowState::Closed { opens_at })
        .ok_or_else(|| "spec.window never opens".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Weekday], start: &str, hours: u64, zone: &str) -> WindowSpec {
        WindowSpec {
            days: days.to_vec(),
            start: start.to_owned(),
            duration: std::time::Duration::from_secs(hours * 3600).into(),
            time_zone: zone.to_owned(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn a_nightly_window_opens_and_closes() {
        // 22:00-02:00 London, every day; 2026-11-22 is a Sunday (GMT, UTC+0).
        let nightly = window(&[], "22:00", 4, "Europe/London");
        assert_eq!(
            window_state(&nightly, at("2026-11-22T12:00:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-11-22T22:00:00Z")
            })
        );
        assert_eq!(
            window_state(&nightly, at("2026-11-23T01:30:00Z")),
            Ok(WindowState::Open {
                closes_at: at("2026-11-23T02:00:00Z")
            })
        );
    }

    #[test]
    fn days_and_time_zones_are_honoured() {
        // Saturdays 01:00 for 3h in New York (UTC-5 in November).
        let weekly = window(&[Weekday::Sat], "01:00", 3, "America/New_York");
        assert_eq!(
            window_state(&weekly, at("2026-11-22T12:00:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-11-28T06:00:00Z")
            })
        );
        assert!(matches!(
            window_state(&weekly, at("2026-11-28T07:00:00Z")),
            Ok(WindowState::Open { .. })
        ));
    }

    #[test]
    fn daylight_saving_moves_the_window_with_local_time() {
        // London moves to BST (UTC+1) on 2026-03-29: 22:00 local is 21:00 UTC after.
        let nightly = window(&[], "22:00", 1, "Europe/London");
        assert_eq!(
            window_state(&nightly, at("2026-03-30T12:00:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-03-30T21:00:00Z")
            })
        );
    }

    #[test]
    fn an_unknown_zone_is_explained() {
        let error = window_state(
            &window(&[], "22:00", 1, "Mars/Olympus"),
            at("2026-11-22T12:00:00Z"),
        )
        .expect_err("unknown zone");
        assert!(error.contains("not a known IANA time zone"), "{error}");
    }
}
