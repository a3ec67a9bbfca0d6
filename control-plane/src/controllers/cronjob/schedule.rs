//! Cron schedules as Kubernetes reads them: robfig/cron v3's `ParseStandard`, which both
//! the apiserver (CronJob validation) and the CronJob controller use. Five fields
//! (minute hour day-of-month month day-of-week) with `*`/`?`, lists, ranges and steps,
//! month and weekday names (case-insensitive; day-of-week is 0-6, so `7` is refused as
//! upstream refuses it), an optional `TZ=`/`CRON_TZ=` prefix, and the descriptors
//! `@yearly`/`@annually`/`@monthly`/`@weekly`/`@daily`/`@midnight`/`@hourly`/`@every
//! <duration>`. Entry points: [`parse`] and [`Schedule::next`]; error texts are
//! robfig's, since the apiserver returns them in its 422s.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// Set when a field was `*` or `?` (without a step above 1): with it, day-of-month and
/// day-of-week must both match; without it on either, one of them is enough.
const STAR: u64 = 1 << 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spec(Fields),
    /// `@every`: a fixed delay in whole seconds (at least 1).
    Every(i64),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    /// From a `TZ=`/`CRON_TZ=` prefix; otherwise the zone given to [`Schedule::next`].
    zone: Option<TimeZone>,
}

struct Bounds {
    min: u64,
    max: u64,
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

fn bits(min: u64, max: u64, step: u64) -> u64 {
    let mut out = 0;
    let mut i = min;
    while i <= max && i < 64 {
        out |= 1 << i;
        match i.checked_add(step) {
            Some(n) => i = n,
            None => break,
        }
    }
    out
}

fn all(b: &Bounds) -> u64 {
    bits(b.min, b.max, 1) | STAR
}

/// Go's `strconv.Atoi`, with robfig's wrapping of its errors.
fn parse_int(expr: &str) -> Result<u64, ParseError> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": invalid syntax"
        )));
    }
    let n: i64 = expr.parse().map_err(|_| {
        err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": value out of range"
        ))
    })?;
    u64::try_from(n).map_err(|_| err(format!("negative number ({n}) not allowed: {expr}")))
}

fn parse_int_or_name(expr: &str, b: &Bounds) -> Result<u64, ParseError> {
    let lower = expr.to_ascii_lowercase();
    if let Some((_, n)) = b.names.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    parse_int(expr)
}

/// One comma-separated part: `*`, `?`, `n`, `a-b`, each with an optional `/step`.
fn range(expr: &str, b: &Bounds) -> Result<u64, ParseError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra);
    if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (start, end, extra) = (b.min, b.max, STAR);
    } else {
        start = parse_int_or_name(low_and_high[0], b)?;
        end = match low_and_high.len() {
            1 => start,
            2 => parse_int_or_name(low_and_high[1], b)?,
            _ => return Err(err(format!("too many hyphens: {expr}"))),
        };
        extra = 0;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(err(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(err(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok(bits(start, end, step) | extra)
}

fn field(text: &str, b: &Bounds) -> Result<u64, ParseError> {
    text.split(',')
        .try_fold(0, |acc, part| Ok(acc | range(part, b)?))
}

/// Parses `spec` as Kubernetes does (robfig/cron v3 `ParseStandard`).
pub fn parse(spec: &str) -> Result<Schedule, ParseError> {
    if spec.is_empty() {
        return Err(err("empty spec string"));
    }
    let mut spec = spec;
    let mut zone = None;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let eq = spec.find('=').unwrap_or(0);
        let space = spec.find(' ').unwrap_or(spec.len());
        let name = &spec[eq + 1..space];
        zone = Some(TimeZone::get(name).map_err(|_| {
            err(format!(
                "provided bad location {name}: unknown time zone {name}"
            ))
        })?);
        spec = spec[space..].trim();
    }
    if spec.starts_with('@') {
        return Ok(Schedule {
            kind: descriptor(spec)?,
            zone,
        });
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        )));
    }
    Ok(Schedule {
        kind: Kind::Spec(Fields {
            minute: field(fields[0], &MINUTES)?,
            hour: field(fields[1], &HOURS)?,
            dom: field(fields[2], &DOM)?,
            month: field(fields[3], &MONTHS)?,
            dow: field(fields[4], &DOW)?,
        }),
        zone,
    })
}

fn descriptor(d: &str) -> Result<Kind, ParseError> {
    let one = |b: &Bounds| 1u64 << b.min;
    let fields = match d {
        "@yearly" | "@annually" => Fields {
            minute: one(&MINUTES),
            hour: one(&HOURS),
            dom: one(&DOM),
            month: one(&MONTHS),
            dow: all(&DOW),
        },
        "@monthly" => Fields {
            minute: one(&MINUTES),
            hour: one(&HOURS),
            dom: one(&DOM),
            month: all(&MONTHS),
            dow: all(&DOW),
        },
        "@weekly" => Fields {
            minute: one(&MINUTES),
            hour: one(&HOURS),
            dom: all(&DOM),
            month: all(&MONTHS),
            dow: one(&DOW),
        },
        "@daily" | "@midnight" => Fields {
            minute: one(&MINUTES),
            hour: one(&HOURS),
            dom: all(&DOM),
            month: all(&MONTHS),
            dow: all(&DOW),
        },
        "@hourly" => Fields {
            minute: one(&MINUTES),
            hour: all(&HOURS),
            dom: all(&DOM),
            month: all(&MONTHS),
            dow: all(&DOW),
        },
        _ => {
            if let Some(text) = d.strip_prefix("@every ") {
                let nanos = go_duration(text)
                    .map_err(|e| err(format!("failed to parse duration {d}: {e}")))?;
                // robfig's Every: at least a second, truncated to whole seconds.
                let secs = i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX);
                return Ok(Kind::Every(secs.max(1)));
            }
            return Err(err(format!("unrecognized descriptor: {d}")));
        }
    };
    Ok(Kind::Spec(fields))
}

/// Go's `time.ParseDuration`, in nanoseconds, with its error texts.
fn go_duration(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration \"{s}\""));
        }
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit \"{unit}\" in duration \"{s}\"")),
        };
        let whole: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let mut value = whole.checked_mul(scale).ok_or_else(invalid)?;
        let mut div = 1i128;
        let mut frac_value = 0i128;
        for d in frac.bytes().take(18) {
            frac_value = frac_value * 10 + i128::from(d - b'0');
            div *= 10;
        }
        value += frac_value * scale / div;
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
        rest = after;
    }
    Ok(if neg { -total } else { total })
}

impl Schedule {
    /// The zone of a `TZ=`/`CRON_TZ=` prefix, if the schedule had one.
    pub fn zone(&self) -> Option<&TimeZone> {
        self.zone.as_ref()
    }

    /// The first activation strictly after `after`, reckoned in the schedule's own zone
    /// or else `zone`; `None` when there is none within five years (`0 0 31 2 *`).
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let zone = self.zone.as_ref().unwrap_or(zone);
        match self.kind {
            Kind::Every(secs) => Timestamp::from_second(after.as_second().checked_add(secs)?).ok(),
            Kind::Spec(f) => next_spec(&f, after, zone),
        }
    }
}

fn has(mask: u64, v: impl Into<i64>) -> bool {
    u32::try_from(v.into()).is_ok_and(|v| v < 64 && mask & (1u64 << v) != 0)
}

fn day_matches(f: &Fields, t: &Zoned) -> bool {
    let dom = has(f.dom, t.day());
    let dow = has(f.dow, t.weekday().to_sunday_zero_offset());
    if f.dom & STAR != 0 || f.dow & STAR != 0 {
        dom && dow
    } else {
        dom || dow
    }
}

/// robfig's `SpecSchedule.Next`: find the first matching month, then day, hour and
/// minute, restarting from the month whenever a field wraps around.
fn next_spec(f: &Fields, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    let start = Timestamp::from_second(after.as_second().checked_add(1)?).ok()?;
    let mut t = start.to_zoned(zone.clone());
    let mut added = false;
    let year_limit = t.year() + 5;
    let at = |t: &Zoned, hour: i8| -> Option<Zoned> {
        t.date().at(hour, 0, 0, 0).to_zoned(zone.clone()).ok()
    };
    'wrap: loop {
        if t.year() > year_limit {
            return None;
        }
        while !has(f.month, t.month()) {
            if !added {
                added = true;
                t = t.date().first_of_month().to_zoned(zone.clone()).ok()?;
            }
            t = t.checked_add(1.month()).ok()?;
            if t.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(f, &t) {
            if !added {
                added = true;
                t = at(&t, 0)?;
            }
            t = t.checked_add(1.day()).ok()?;
            // Across a DST change the day may not start at midnight: go back to it.
            let hour = i64::from(t.hour());
            if hour != 0 {
                let shift = if hour > 12 { 24 - hour } else { -hour };
                t = t.checked_add(shift.hours()).ok()?;
            }
            if t.day() == 1 {
                continue 'wrap;
            }
        }
        while !has(f.hour, t.hour()) {
            if !added {
                added = true;
                t = at(&t, t.hour())?;
            }
            t = t.checked_add(1.hour()).ok()?;
            if t.hour() == 0 {
                continue 'wrap;
            }
        }
        while !has(f.minute, t.minute()) {
            if !added {
                added = true;
                t = truncate(&t, 60)?;
            }
            t = t.checked_add(1.minute()).ok()?;
            if t.minute() == 0 {
                continue 'wrap;
            }
        }
        // The second field is always 0 in standard schedules.
        while t.second() != 0 {
            if !added {
                added = true;
                t = truncate(&t, 1)?;
            }
            t = t.checked_add(1.second()).ok()?;
            if t.second() == 0 {
                continue 'wrap;
            }
        }
        return Some(t.timestamp());
    }
}

/// Go's `Time.Truncate` to `secs` (absolute time, not wall clock).
fn truncate(t: &Zoned, secs: i64) -> Option<Zoned> {
    let s = t.timestamp().as_second();
    let ts = Timestamp::from_second(s - s.rem_euclid(secs)).ok()?;
    Some(ts.to_zoned(t.time_zone().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(spec: &str, after: &str) -> String {
        parse(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .next(ts(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn error(spec: &str) -> String {
        match parse(spec) {
            Ok(_) => panic!("{spec} should not parse"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fields_lists_ranges_and_steps() {
        assert_eq!(
            next("*/1 * * * *", "2024-01-01T00:00:30Z"),
            "2024-01-01T00:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-01-01T00:01:00Z"),
            "2024-01-01T00:02:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2024-01-01T00:16:00Z"),
            "2024-01-01T00:30:00Z"
        );
        assert_eq!(
            next("5,10 * * * *", "2024-01-01T00:06:00Z"),
            "2024-01-01T00:10:00Z"
        );
        assert_eq!(
            next("10-20/5 3 * * *", "2024-01-01T03:16:00Z"),
            "2024-01-01T03:20:00Z"
        );
        assert_eq!(
            next("10-20/5 3 * * *", "2024-01-01T03:20:00Z"),
            "2024-01-02T03:10:00Z"
        );
        // "N/step" is "N-max/step".
        assert_eq!(
            next("50/5 * * * *", "2024-01-01T00:56:00Z"),
            "2024-01-01T01:50:00Z"
        );
        assert_eq!(
            next("0 0 1 1 *", "2024-06-01T00:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("30 12 * * ?", "2024-01-01T13:00:00Z"),
            "2024-01-02T12:30:00Z"
        );
    }

    #[test]
    fn names_are_case_insensitive() {
        // 2024-01-01 is a Monday.
        assert_eq!(
            next("0 9 * * sat", "2024-01-01T00:00:00Z"),
            "2024-01-06T09:00:00Z"
        );
        assert_eq!(
            next("0 9 * * MON-fri", "2024-01-05T10:00:00Z"),
            "2024-01-08T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1 Mar,DEC *", "2024-04-01T00:00:00Z"),
            "2024-12-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 0", "2024-01-01T00:00:00Z"),
            "2024-01-07T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_restricted() {
        // Both restricted: the 13th or any Friday (2024-01-05 is a Friday).
        assert_eq!(
            next("0 0 13 * 5", "2024-01-01T00:00:00Z"),
            "2024-01-05T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * 5", "2024-01-12T00:00:00Z"),
            "2024-01-13T00:00:00Z"
        );
        // One is a star: both must match (a Friday the 13th: 2024-09-13).
        assert_eq!(
            next("0 0 13 * *", "2024-01-14T00:00:00Z"),
            "2024-02-13T00:00:00Z"
        );
        // A stepped star is no star: */2 day-of-month with Mondays is "or".
        assert_eq!(
            next("0 0 */2 * 1", "2024-01-01T12:00:00Z"),
            "2024-01-03T00:00:00Z"
        );
    }

    #[test]
    fn descriptors() {
        let at = "2024-05-15T10:20:30Z";
        assert_eq!(next("@yearly", at), "2025-01-01T00:00:00Z");
        assert_eq!(next("@annually", at), "2025-01-01T00:00:00Z");
        assert_eq!(next("@monthly", at), "2024-06-01T00:00:00Z");
        // 2024-05-15 is a Wednesday; the next Sunday is the 19th.
        assert_eq!(next("@weekly", at), "2024-05-19T00:00:00Z");
        assert_eq!(next("@daily", at), "2024-05-16T00:00:00Z");
        assert_eq!(next("@midnight", at), "2024-05-16T00:00:00Z");
        assert_eq!(next("@hourly", at), "2024-05-15T11:00:00Z");
        assert_eq!(next("@every 90s", at), "2024-05-15T10:22:00Z");
        assert_eq!(next("@every 1h30m", at), "2024-05-15T11:50:30Z");
        // Under a second becomes a second.
        assert_eq!(next("@every 10ms", at), "2024-05-15T10:20:31Z");
    }

    #[test]
    fn impossible_dates_have_no_next_time() {
        assert_eq!(next("0 0 31 2 *", "2024-01-01T00:00:00Z"), "");
        // Leap days come round within the five-year search.
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
    }

    #[test]
    fn time_zones() {
        let paris = TimeZone::get("Europe/Paris").expect("tz database");
        let s = parse("0 3 * * *").expect("parses");
        // 03:00 in Paris in winter is 02:00 UTC.
        assert_eq!(
            s.next(ts("2024-01-01T00:00:00Z"), &paris)
                .map(|t| t.to_string()),
            Some("2024-01-01T02:00:00Z".into())
        );
        let s = parse("CRON_TZ=America/New_York 0 9 * * *").expect("parses");
        assert_eq!(
            s.next(ts("2024-07-01T00:00:00Z"), &paris)
                .map(|t| t.to_string()),
            Some("2024-07-01T13:00:00Z".into())
        );
        // 02:30 does not exist in Paris on 2024-03-31 (clocks jump 02:00 -> 03:00).
        let s = parse("30 2 * * *").expect("parses");
        let t = s
            .next(ts("2024-03-30T02:00:00Z"), &paris)
            .expect("a next time");
        assert!(t > ts("2024-03-30T02:00:00Z"), "{t}");
        assert_eq!(
            error("TZ=Mars/Olympus 0 * * * *"),
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn errors_are_robfigs() {
        assert_eq!(error(""), "empty spec string");
        assert_eq!(
            error("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            error("0 0 * * * *"),
            "expected exactly 5 fields, found 6: [0 0 * * * *]"
        );
        assert_eq!(
            error("61 * * * *"),
            "end of range (61) above maximum (59): 61"
        );
        assert_eq!(error("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            error("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            error("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(error("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(error("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            error("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            error("* * * foo *"),
            "failed to parse int from foo: strconv.Atoi: parsing \"foo\": invalid syntax"
        );
        assert_eq!(error("@reboot"), "unrecognized descriptor: @reboot");
        assert_eq!(
            error("@every 5x"),
            "failed to parse duration @every 5x: time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            error("@every 5"),
            "failed to parse duration @every 5: time: missing unit in duration \"5\""
        );
        assert!(parse("0 0 31 2 *").is_ok(), "grammatically valid");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(go_duration("-1.5h"), Ok(-5_400_000_000_000));
        assert_eq!(go_duration("0"), Ok(0));
        assert!(go_duration("").is_err());
        assert!(go_duration(".s").is_err());
    }
}
