//! JSON written as `orjson.dumps` writes it, for the records the engine publishes
//! (`schemas/records.py` stays their definition; `tests/test_native_core.py` compares
//! every decision's bytes with `DecisionRecord.to_json`).

use std::io::Write;

/// A JSON string, escaped as orjson escapes (serde_json's rules are the same: `\"`, `\\`,
/// the short forms of \b \t \n \f \r, other controls as `\u00xx`, the rest as UTF-8).
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `format_ts` as a JSON string (`"2026-11-28T09:30:00.000Z"`); an error outside the years
/// 1 to 9999, where Python's `date` raises too.
pub fn push_ts(out: &mut Vec<u8>, ms: i64) -> Result<(), String> {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return Err(format!("year {year} is out of range"));
    }
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, millis) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    write!(out, "\"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z\"")
        .expect("writing to a Vec cannot fail");
    Ok(())
}
