//! The common shape of a canonical message event, read straight from its JSON: exactly
//! what `schemas/records.py`'s `decode_record` accepts on its compiled path (the seven
//! fields and nothing else, `ts` as the producers write it), with the same result. Anything
//! else is left to Python (`None`), which reads every shape and says what is wrong.

use std::borrow::Cow;

use serde::Deserialize;

const MAX_ID_LENGTH: usize = 256;
const MAX_TEXT_LENGTH: usize = 8192;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    app: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    bot_id: Cow<'a, str>,
    #[serde(borrow)]
    direction: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

pub struct Message<'a> {
    pub event_id: Cow<'a, str>,
    pub app: u8, // index in APPS
    pub user_id: Cow<'a, str>,
    pub bot_id: Cow<'a, str>,
    pub inbound: bool,
    pub ts: i64,
    pub text: Cow<'a, str>,
}

/// Python's `len` of a string: its code points.
fn chars_within(text: &str, limit: usize) -> bool {
    text.len() <= limit || text.chars().count() <= limit
}

fn identifier(text: &str) -> bool {
    !text.is_empty() && chars_within(text, MAX_ID_LENGTH)
}

pub fn read(data: &[u8]) -> Option<Message<'_>> {
    let common: Common = serde_json::from_slice(data).ok()?;
    if !(identifier(&common.event_id) && identifier(&common.user_id) && identifier(&common.bot_id)
        && chars_within(&common.text, MAX_TEXT_LENGTH))
    {
        return None;
    }
    let app = match &*common.app {
        "facebook" => 0,
        "instagram" => 1,
        "whatsapp" => 2,
        _ => return None,
    };
    let inbound = match &*common.direction {
        "inbound" => true,
        "outbound" => false,
        _ => return None,
    };
    let ts = producers_ts(common.ts.as_bytes())?;
    Some(Message { event_id: common.event_id, app, user_id: common.user_id, bot_id: common.bot_id, inbound, ts,
                   text: common.text })
}

fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |value, digit| digit.is_ascii_digit().then(|| value * 10 + (digit - b'0') as i64))
}

/// `_producers_ts`: `YYYY-MM-DDTHH:MM:SS.mmmZ` as epoch ms, from 1970 on; None for any other.
pub fn producers_ts(ts: &[u8]) -> Option<i64> {
    if ts.len() != 24 || ts[4] != b'-' || ts[7] != b'-' || ts[10] != b'T' || ts[13] != b':' || ts[16] != b':'
        || ts[19] != b'.' || ts[23] != b'Z'
    {
        return None;
    }
    let (year, month, day) = (number(&ts[0..4])?, number(&ts[5..7])?, number(&ts[8..10])?);
    let (hour, minute, second, millis) = (number(&ts[11..13])?, number(&ts[14..16])?, number(&ts[17..19])?,
                                          number(&ts[20..23])?);
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month)
        || hour > 23 || minute > 59 || second > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
