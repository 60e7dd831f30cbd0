//! The maintenance window: whether a node may be started now, and when the window next
//! opens. Time zones come from the tz database built into the binary (no files read).

use jiff::civil::Weekday as CivilWeekday;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use upchain_api::{Weekday, WindowSpec};

/// Where `now` falls relative to the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Inside a window that closes at this instant.
    Open {
        /// When the current window closes.
        closes_at: Timestamp,
    },
    /// Outside; the next window opens at this instant.
    Closed {
        /// When the next window opens (outside every blackout).
        opens_at: Timestamp,
        /// The blackout in force now, described for a person, if that is why it is closed.
        blackout: Option<String>,
    },
}

/// A blackout as instants: from `start` (inclusive) to `end` (exclusive).
struct Blackout {
    start: Timestamp,
    end: Timestamp,
    described: String,
}

fn blackouts(window: &WindowSpec, zone: &TimeZone) -> Result<Vec<Blackout>, String> {
    window
        .blackouts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let date = |field: &str, text: &str| {
                text.parse::<jiff::civil::Date>().map_err(|_| {
                    format!(
                        "spec.window.blackouts[{i}].{field} {text:?} is not a date; write                          YYYY-MM-DD, such as 2026-12-24"
                    )
                })
            };
            let first = date("start", &b.start)?;
            let last = date("end", &b.end)?;
            if last < first {
                return Err(format!(
                    "spec.window.blackouts[{i}] ends ({last}) before it starts ({first})"
                ));
            }
            let midnight = |day: jiff::civil::Date| {
                day.to_zoned(zone.clone())
                    .map(|z| z.timestamp())
                    .map_err(|e| format!("spec.window.blackouts[{i}]: {e}"))
            };
            let end = last
                .checked_add(Span::new().days(1))
                .map_err(|e| format!("spec.window.blackouts[{i}].end: {e}"))?;
            let reason = b
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            Ok(Blackout {
                start: midnight(first)?,
                end: midnight(end)?,
                described: format!("blackout {first} to {last}{reason}"),
            })
        })
        .collect()
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

/// Where `now` falls, blackouts included. Errors name the field to fix.
pub fn window_state(window: &WindowSpec, now: Timestamp) -> Result<WindowState, String> {
    let zone = TimeZone::get(&window.time_zone).map_err(|_| {
        format!(
            "spec.window.timeZone {:?} is not a known IANA time zone (such as Europe/London \
             or UTC)",
            window.time_zone
        )
    })?;
    let blackouts = blackouts(window, &zone)?;
    let in_force = |at: Timestamp| blackouts.iter().find(|b| b.start <= at && at < b.end);
    let blackout = in_force(now).map(|b| b.described.clone());
    // Step past blackouts and closed stretches until an instant that is in neither; each
    // step moves forward, and there are at most 64 blackouts.
    let mut at = now;
    for _ in 0..=2 * blackouts.len() + 1 {
        if let Some(b) = in_force(at) {
            at = b.end;
            continue;
        }
        match regular_state(window, &zone, at)? {
            WindowState::Open { closes_at } => {
                let closes_at = blackouts
                    .iter()
                    .map(|b| b.start)
                    .filter(|start| *start > at)
                    .fold(closes_at, Timestamp::min);
                return Ok(if at == now {
                    WindowState::Open { closes_at }
                } else {
                    WindowState::Closed {
                        opens_at: at,
                        blackout,
                    }
                });
            }
            WindowState::Closed { opens_at, .. } => {
                if in_force(opens_at).is_none() {
                    return Ok(WindowState::Closed { opens_at, blackout });
                }
                at = opens_at;
            }
        }
    }
    Err("spec.window never opens outside its blackouts".to_owned())
}

/// Where `at` falls relative to the days, start and duration alone.
fn regular_state(
    window: &WindowSpec,
    zone: &TimeZone,
    now: Timestamp,
) -> Result<WindowState, String> {
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
        .map(|opens_at| WindowState::Closed {
            opens_at,
            blackout: None,
        })
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
            blackouts: Vec::new(),
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
                opens_at: at("2026-11-22T22:00:00Z"),
                blackout: None,
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
                opens_at: at("2026-11-28T06:00:00Z"),
                blackout: None,
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
                opens_at: at("2026-03-30T21:00:00Z"),
                blackout: None,
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

    fn blackout(start: &str, end: &str) -> upchain_api::Blackout {
        upchain_api::Blackout {
            start: start.to_owned(),
            end: end.to_owned(),
            reason: Some("change freeze".to_owned()),
        }
    }

    #[test]
    fn no_node_starts_in_a_blackout_whatever_the_window_says() {
        // Always open, except 2026-12-24 to 2026-12-26 in Berlin (UTC+1 in December).
        let mut always = window(&[], "00:00", 24, "Europe/Berlin");
        always.blackouts = vec![blackout("2026-12-24", "2026-12-26")];
        assert_eq!(
            window_state(&always, at("2026-12-25T12:00:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-12-26T23:00:00Z"),
                blackout: Some("blackout 2026-12-24 to 2026-12-26 (change freeze)".to_owned()),
            })
        );
        // The day before, the open window closes when the blackout begins.
        assert_eq!(
            window_state(&always, at("2026-12-23T12:00:00Z")),
            Ok(WindowState::Open {
                closes_at: at("2026-12-23T23:00:00Z")
            })
        );
    }

    #[test]
    fn a_blackout_defers_to_the_first_regular_window_after_it() {
        // Nightly 22:00 UTC for 3h; blacked out on 2026-11-23 and 2026-11-24.
        let mut nightly = window(&[], "22:00", 3, "UTC");
        nightly.blackouts = vec![blackout("2026-11-23", "2026-11-24")];
        assert_eq!(
            window_state(&nightly, at("2026-11-23T22:30:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-11-25T00:00:00Z"),
                blackout: Some("blackout 2026-11-23 to 2026-11-24 (change freeze)".to_owned()),
            }),
            "the window that opened at 22:00 on the 24th is still open at midnight"
        );
        let mut weekly = window(&[Weekday::Sat], "01:00", 3, "UTC");
        weekly.blackouts = vec![blackout("2026-11-28", "2026-11-28")];
        assert_eq!(
            window_state(&weekly, at("2026-11-23T12:00:00Z")),
            Ok(WindowState::Closed {
                opens_at: at("2026-12-05T01:00:00Z"),
                blackout: None,
            }),
            "the Saturday in the blackout is passed over"
        );
    }

    #[test]
    fn a_malformed_blackout_is_explained() {
        let mut nightly = window(&[], "22:00", 2, "UTC");
        nightly.blackouts = vec![blackout("2026-12-31", "2026-12-01")];
        let error = window_state(&nightly, at("2026-11-23T12:00:00Z")).expect_err("reversed");
        assert!(error.contains("blackouts[0] ends"), "{error}");
        nightly.blackouts = vec![blackout("2026-13-01", "2026-13-02")];
        let error = window_state(&nightly, at("2026-11-23T12:00:00Z")).expect_err("bad date");
        assert!(
            error.contains("blackouts[0].start \"2026-13-01\" is not a date"),
            "{error}"
        );
    }
}
