//! `time-range-rule`: approve within a daily window, on chosen weekdays and dates
//! (`docs/policy.md`, *`time-range-rule`*).

use jiff::civil::Date;

use super::{Arg, Args, EvalContext};
use crate::error::{LoadError, LoadErrorKind, Warning};
use crate::timespec::{TimeOfDay, parse_date, parse_time};
use crate::yaml::Value;

pub const ARGS: &[&str] = &["time_start", "time_end", "days", "include", "exclude"];
const ALL_DAYS: u8 = 0b111_1111;

#[derive(Debug)]
pub struct TimeRange {
    window: Option<Window>,
    /// Bit n set: weekday n (0 = Monday) is in range.
    days: u8,
    include: Vec<Date>,
    exclude: Vec<Date>,
}

/// A daily window, both ends included, to the second.
#[derive(Debug)]
struct Window {
    start: u32,
    end: u32,
    /// Compare on this offset's wall clock instead of the keyserver's zone.
    offset: Option<i32>,
}

/// Reads a time argument: a string, or an unquoted `17:00` (which YAML 1.1 types as the
/// integer 1020; the text as written is what counts).
pub(crate) fn time_arg(arg: &Arg<'_>, warnings: &mut Vec<Warning>) -> Result<TimeOfDay, LoadError> {
    const EXPECTED: &str = "a time such as 9:00am, 5pm, 17:00 or 09:00+04:00";
    let scalar = arg.scalar().ok_or_else(|| arg.bad(EXPECTED))?;
    match scalar.value {
        Value::Str => {}
        Value::Int(as_integer) if scalar.plain && scalar.text.contains(':') => {
            warnings.push(Warning::new(
                &arg.loc,
                format!(
                    "unquoted '{}' is the integer {as_integer} in YAML 1.1 and the original engine \
                     rejected it; read here as a time of day (quote it to be explicit)",
                    scalar.text
                ),
            ));
        }
        _ => return Err(arg.bad(EXPECTED)),
    }
    parse_time(&scalar.text).map_err(|m| arg.error(LoadErrorKind::Invalid(m)))
}

fn dates_arg(arg: &Arg<'_>, warnings: &mut Vec<Warning>) -> Result<Vec<Date>, LoadError> {
    const EXPECTED: &str = "a list of dates (YYYY-MM-DD)";
    let mut out = Vec::new();
    for item in arg.list(EXPECTED)? {
        let scalar = item
            .scalar()
            .ok_or_else(|| item.bad("a date (YYYY-MM-DD)"))?;
        let date = match scalar.value {
            Value::Date(d) => {
                warnings.push(Warning::new(
                    &item.loc,
                    format!(
                        "unquoted '{}' is a YAML date, which the original engine rejected; \
                         read here as that date (quote it to be explicit)",
                        scalar.text
                    ),
                ));
                d
            }
            Value::Str => {
                parse_date(&scalar.text).map_err(|m| item.error(LoadErrorKind::Invalid(m)))?
            }
            _ => return Err(item.bad("a date (YYYY-MM-DD)")),
        };
        out.push(date);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl TimeRange {
    pub fn compile(args: &Args<'_>, warnings: &mut Vec<Warning>) -> Result<Self, LoadError> {
        let start = args.get("time_start");
        let end = args.get("time_end");
        let window = match (start, end) {
            (None, None) => None,
            (Some(s), None) => {
                return Err(s.error(LoadErrorKind::OnlyOneOfStartEnd {
                    missing: "time_end",
                }));
            }
            (None, Some(e)) => {
                return Err(e.error(LoadErrorKind::OnlyOneOfStartEnd {
                    missing: "time_start",
                }));
            }
            (Some(s), Some(e)) => {
                let start = time_arg(&s, warnings)?;
                let end = time_arg(&e, warnings)?;
                if start.offset != end.offset {
                    return Err(e.error(LoadErrorKind::Invalid(format!(
                        "time_start ({start}) and time_end ({end}) must use the same UTC offset, or none"
                    ))));
                }
                if start.seconds >= end.seconds {
                    return Err(e.error(LoadErrorKind::StartNotBeforeEnd {
                        start: start.to_string(),
                        end: end.to_string(),
                    }));
                }
                if let Some(off) = start.offset {
                    let utc = |t: u32| (i64::from(t) - i64::from(off)).rem_euclid(86_400);
                    if utc(start.seconds) > utc(end.seconds) {
                        warnings.push(Warning::new(
                            &s.loc,
                            "this window crosses midnight UTC: the original engine compared in \
                             UTC and never matched it; it is compared on its own offset's clock here",
                        ));
                    }
                }
                Some(Window {
                    start: start.seconds,
                    end: end.seconds,
                    offset: start.offset,
                })
            }
        };
        let days = match args.get("days") {
            None => ALL_DAYS,
            Some(arg) => {
                let mut mask = 0u8;
                for item in arg.list("a list of weekdays, 0 (Monday) to 6 (Sunday)")? {
                    let d = item.int("a weekday, 0 (Monday) to 6 (Sunday)")?;
                    if !(0..=6).contains(&d) {
                        return Err(item.error(LoadErrorKind::DayOutOfRange(d)));
                    }
                    mask |= 1 << d;
                }
                mask
            }
        };
        let include = args
            .get("include")
            .map(|a| dates_arg(&a, warnings))
            .transpose()?
            .unwrap_or_default();
        let exclude = match args.get("exclude") {
            None => Vec::new(),
            Some(arg) => {
                let exclude = dates_arg(&arg, warnings)?;
                if let Some(d) = exclude.iter().find(|d| include.binary_search(d).is_ok()) {
                    return Err(arg.error(LoadErrorKind::IncludeExcludeOverlap(*d)));
                }
                exclude
            }
        };
        Ok(TimeRange {
            window,
            days,
            include,
            exclude,
        })
    }

    pub fn approves(&self, ctx: &EvalContext<'_>) -> bool {
        let local = ctx.local();
        let date = local.date();
        if self.exclude.binary_search(&date).is_ok() {
            return false;
        }
        let weekday = date.weekday().to_monday_zero_offset();
        if self.days & (1 << weekday) == 0 && self.include.binary_search(&date).is_err() {
            return false;
        }
        let Some(w) = &self.window else {
            return true;
        };
        let now = match w.offset {
            Some(off) => (ctx.at.as_second() + i64::from(off)).rem_euclid(86_400) as u32,
            None => {
                let t = local.time();
                t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32
            }
        };
        w.start <= now && now <= w.end
    }
}
