//! Times of day and dates as policy files write them: `9:00am`, `5pm`, `17:00`,
//! `17:00:30`, `09:00+04:00`, `5:00pm EST`; `2022-03-07` (`docs/policy.md`, *Times and
//! dates*).

use std::fmt;

use jiff::civil::Date;

/// A time of day to the second, with the UTC offset it was written with, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    /// Seconds since midnight, 0..86400.
    pub seconds: u32,
    /// Offset east of UTC in seconds, when the text named one.
    pub offset: Option<i32>,
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (
            self.seconds / 3600,
            self.seconds / 60 % 60,
            self.seconds % 60,
        );
        write!(f, "{h:02}:{m:02}:{s:02}")?;
        if let Some(off) = self.offset {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60)?;
        }
        Ok(())
    }
}

/// Zone abbreviations accepted after a time (`5:00pm EST`), as fixed offsets.
const ABBREVIATIONS: &[(&str, i32)] = &[
    ("UTC", 0),
    ("GMT", 0),
    ("Z", 0),
    ("EST", -5),
    ("EDT", -4),
    ("CST", -6),
    ("CDT", -5),
    ("MST", -7),
    ("MDT", -6),
    ("PST", -8),
    ("PDT", -7),
];

/// Parses a time of day. The error says what was expected.
pub fn parse_time(text: &str) -> Result<TimeOfDay, String> {
    let bad = || {
        format!("'{text}' is not a time (write e.g. 9:00am, 5pm, 17:00, 17:00:30 or 09:00+04:00)")
    };
    let s = text.trim();
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();

    // hour
    let n = digits(s);
    if n == 0 || n > 2 {
        return Err(bad());
    }
    let hour: u32 = s[..n].parse().map_err(|_| bad())?;
    let mut rest = &s[n..];
    let mut minute = 0;
    let mut second = 0;
    let mut has_minutes = false;
    if let Some(r) = rest.strip_prefix(':') {
        if digits(r) != 2 {
            return Err(bad());
        }
        minute = r[..2].parse().map_err(|_| bad())?;
        rest = &r[2..];
        has_minutes = true;
        if let Some(r) = rest.strip_prefix(':') {
            if digits(r) != 2 {
                return Err(bad());
            }
            second = r[..2].parse().map_err(|_| bad())?;
            rest = &r[2..];
            if let Some(r) = rest.strip_prefix('.') {
                let f = digits(r);
                if f == 0 {
                    return Err(bad());
                }
                rest = &r[f..]; // fractions of a second are dropped: windows are to the second
            }
        }
    }
    rest = rest.trim_start();

    // am / pm
    let lower = rest.to_ascii_lowercase();
    let meridiem = ["a.m.", "p.m.", "am", "pm", "a", "p"]
        .into_iter()
        .find(|m| {
            lower.starts_with(m)
                && !lower[m.len()..]
                    .bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
        });
    let mut hour = hour;
    if let Some(m) = meridiem {
        if !(1..=12).contains(&hour) {
            return Err(format!(
                "'{text}': the hour of a 12-hour time must be 1 to 12"
            ));
        }
        let pm = m.starts_with('p');
        hour = match (hour, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, false) => h,
            (h, true) => h + 12,
        };
        rest = rest[m.len()..].trim_start();
    } else if !has_minutes {
        return Err(bad());
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("'{text}' is not a valid time of day"));
    }

    let offset = if rest.is_empty() {
        None
    } else {
        Some(parse_offset(rest).ok_or_else(bad)?)
    };
    Ok(TimeOfDay {
        seconds: hour * 3600 + minute * 60 + second,
        offset,
    })
}

/// `Z`, `UTC`, `EST`, `+04:00`, `+0400`, `-04`, `UTC+2`.
fn parse_offset(text: &str) -> Option<i32> {
    let upper = text.to_ascii_uppercase();
    if let Some((_, hours)) = ABBREVIATIONS.iter().find(|(name, _)| *name == upper) {
        return Some(hours * 3600);
    }
    let numeric = upper
        .strip_prefix("UTC")
        .or_else(|| upper.strip_prefix("GMT"))
        .unwrap_or(&upper);
    let (sign, body) = match numeric.as_bytes().first()? {
        b'+' => (1, &numeric[1..]),
        b'-' => (-1, &numeric[1..]),
        _ => return None,
    };
    let (h, m) = match body.split_once(':') {
        Some((h, m)) => (h, m),
        None if body.len() == 4 => (&body[..2], &body[2..]),
        None => (body, "0"),
    };
    if h.is_empty()
        || h.len() > 2
        || m.len() > 2
        || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// Parses a date written as text: `2022-03-07` or `2022/03/07`.
pub fn parse_date(text: &str) -> Result<Date, String> {
    let bad = || format!("'{text}' is not a date (write YYYY-MM-DD)");
    let t = text.trim();
    let sep = if t.contains('/') { '/' } else { '-' };
    let mut parts = t.splitn(3, sep);
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || m.is_empty() || m.len() > 2 || d.is_empty() || d.len() > 2 {
        return Err(bad());
    }
    let y: i16 = y.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    let d: i8 = d.parse().map_err(|_| bad())?;
    Date::new(y, m, d).map_err(|_| format!("'{text}' is not a valid date"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u32 {
        parse_time(text).expect("parses").seconds
    }

    #[test]
    fn twelve_and_twenty_four_hour_times() {
        assert_eq!(secs("9:00am"), 9 * 3600);
        assert_eq!(secs("9:00 AM"), 9 * 3600);
        assert_eq!(secs("5pm"), 17 * 3600);
        assert_eq!(secs("5:00pm"), 17 * 3600);
        assert_eq!(secs("12am"), 0);
        assert_eq!(secs("12:30pm"), 12 * 3600 + 1800);
        assert_eq!(secs("17:00"), 17 * 3600);
        assert_eq!(secs("17:00:30"), 17 * 3600 + 30);
        assert_eq!(secs("00:00"), 0);
        assert_eq!(secs("23:59:59"), 86399);
    }

    #[test]
    fn offsets_and_zone_abbreviations() {
        let t = parse_time("09:00+04:00").expect("parses");
        assert_eq!((t.seconds, t.offset), (9 * 3600, Some(4 * 3600)));
        assert_eq!(
            parse_time("5:00pm EST").expect("parses").offset,
            Some(-5 * 3600)
        );
        assert_eq!(parse_time("17:00Z").expect("parses").offset, Some(0));
        assert_eq!(
            parse_time("17:00 -0530").expect("parses").offset,
            Some(-(5 * 3600 + 1800))
        );
        assert_eq!(parse_time("17:00").expect("parses").offset, None);
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for bad in [
            "",
            "noon",
            "25:00",
            "17",
            "13pm",
            "0am",
            "17:60",
            "9:0",
            "17:00 XYZ",
            "1700",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2022-03-07"), Ok(jiff::civil::date(2022, 3, 7)));
        assert_eq!(parse_date("2022/3/7"), Ok(jiff::civil::date(2022, 3, 7)));
        assert!(parse_date("2022-02-30").is_err());
        assert!(parse_date("March 7").is_err());
    }
}
