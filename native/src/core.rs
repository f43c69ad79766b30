//! `domain/rules.py`'s `DecisionCore`, compiled: the same state, order and rule, step for
//! step (each function names the one it mirrors), for the engine's hot path. The Python
//! core stays the reference: `tests/test_native_core.py` drives both on the same streams
//! and compares every request, decision and changelog byte.
//!
//! What stays in Python, called back: whether a text is a stop word or shows distress
//! (only for texts that could be: an ASCII text is a stop word only if its lower case is
//! one, and shows distress only if a phrase of the default list occurs in its lower case;
//! any other text is asked about), and where quiet hours end (time zones).

use std::cmp::Reverse;
use std::io::Write;
use std::collections::BinaryHeap;
use std::rc::Rc;

use ahash::{AHashMap, AHashSet};
use aho_corasick::AhoCorasick;
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{PyBytes, PyList};

use crate::json::{push_str, push_ts};
use crate::message::{self, Message};
use crate::pack::{pack_user, unpack_user};
use crate::state::{Id, Kills, Pair, User, APPS, APP_CODES};

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
const NEVER: i64 = 1 << 62;
const FALLBACK: i32 = 3; // feed_json: not the common shape, or invalid: Python reads it
const TRAILING: &[char] = &[' ', '\t', '\r', '\n', '.', '!', '¡', '?', '¿', ';', ',', ':', '-'];
const PACKED_FORMAT: u8 = 1;
const MAX_TS_MS: i64 = 253_402_300_799_999; // schemas/records.py: 9999-12-31T23:59:59.999Z

type CheckOut = (&'static str, bool, String);

fn passed(rule: &'static str) -> CheckOut {
    (rule, true, String::new())
}

fn failed(rule: &'static str, detail: &str) -> CheckOut {
    (rule, false, detail.to_owned())
}

struct Request {
    followup_id: String,
    user_id: Id,
    bot_id: Id,
    app: u8,
    due: i64,
    last_inbound_ts: i64,
    inbound_in_window: i64,
}

struct Decision {
    followup_id: String,
    user_id: Id,
    bot_id: Id,
    app: u8,
    due: i64,
    send_at: i64,
    clock: i64,
    outcome: &'static str,
    failed: Option<&'static str>,
    inbound_in_window: i64,
    last_inbound_ts: i64,
    checks: Vec<CheckOut>,
}

impl Decision {
    /// `DecisionRecord.to_json`: the same keys in the same order, the same bytes.
    fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(640 + 48 * self.checks.len());
        out.extend_from_slice(b"{\"followup_id\":");
        push_str(&mut out, &self.followup_id);
        out.extend_from_slice(b",\"user_id\":");
        push_str(&mut out, &self.user_id);
        out.extend_from_slice(b",\"bot_id\":");
        push_str(&mut out, &self.bot_id);
        out.extend_from_slice(b",\"app\":");
        push_str(&mut out, APP_CODES[self.app as usize]);
        out.extend_from_slice(b",\"due_ts\":");
        push_ts(&mut out, self.due)?;
        out.extend_from_slice(b",\"send_ts\":");
        push_ts(&mut out, self.send_at)?;
        out.extend_from_slice(b",\"decided_at\":");
        push_ts(&mut out, self.clock)?;
        out.extend_from_slice(b",\"outcome\":");
        push_str(&mut out, self.outcome);
        out.extend_from_slice(b",\"stopped_by\":");
        match self.failed {
            Some(rule) => push_str(&mut out, rule),
            None => out.extend_from_slice(b"null"),
        }
        write!(out, ",\"inbound_in_window\":{},\"last_inbound_ts\":", self.inbound_in_window)
            .expect("writing to a Vec cannot fail");
        push_ts(&mut out, self.last_inbound_ts)?;
        out.extend_from_slice(b",\"checks\":[");
        for (index, (rule, passed, detail)) in self.checks.iter().enumerate() {
            out.extend_from_slice(if index == 0 { b"{\"rule\":" } else { b",{\"rule\":" });
            push_str(&mut out, rule);
            out.extend_from_slice(if *passed { b",\"passed\":true,\"detail\":" } else { b",\"passed\":false,\"detail\":" });
            push_str(&mut out, detail);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }
}

fn blake2b(material: &[u8], size: usize) -> Vec<u8> {
    let mut hasher = Blake2bVar::new(size).expect("8 and 16 are valid BLAKE2b sizes");
    hasher.update(material);
    let mut digest = vec![0u8; size];
    hasher.finalize_variable(&mut digest).expect("the buffer has the digest's size");
    digest
}

/// `rules.event_key`.
fn event_key(app: &str, event_id: &str) -> i64 {
    let digest = blake2b(format!("{app}:{event_id}").as_bytes(), 8);
    i64::from_be_bytes(digest.try_into().unwrap())
}

/// `rules.followup_id`.
fn followup_id(user_id: &str, bot_id: &str, last_inbound_ts: i64, last_inbound_key: i64) -> String {
    let material = format!("{user_id}\x1f{bot_id}\x1f{last_inbound_ts}\x1f{last_inbound_key}");
    blake2b(material.as_bytes(), 16).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `rules.in_holdout`.
fn in_holdout(user_id: &str, bot_id: &str, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let digest = blake2b(format!("{user_id}\x1f{bot_id}").as_bytes(), 8);
    (u64::from_be_bytes(digest.try_into().unwrap()) as f64) / 18_446_744_073_709_551_616.0 < share
}

/// `rules._crowded`.
fn crowded(sends: &[i64], at: i64, span: i64, cap: i64) -> bool {
    let mut near: Vec<i64> = sends.iter().copied().filter(|ts| at - span < *ts && *ts < at + span).collect();
    if (near.len() as i64) < cap {
        return false;
    }
    let index = near.partition_point(|ts| *ts <= at);
    near.insert(index, at);
    let (index, last) = (index as i64, near.len() as i64 - 1 - cap);
    (0.max(index - cap)..=index.min(last)).any(|first| near[(first + cap) as usize] - near[first as usize] < span)
}

/// `DecisionCore._expiry`: when a silent pair can be forgotten without changing any later decision.
fn expiry(last_ts: i64, window: i64, idle_delay: i64) -> i64 {
    last_ts + (2 * window - idle_delay).max(window + idle_delay) + 1
}

/// `DecisionCore._prune_sends`: the follow-ups no later decision can count.
fn prune_sends(sends: &mut Vec<i64>, now_due: i64, clock: i64, window: i64) {
    let horizon = now_due.min(clock - window) - WEEK_MS;
    if sends.first().is_some_and(|first| *first <= horizon) {
        sends.retain(|ts| *ts > horizon);
    }
}

/// One shared string per bot id: pairs and due-heap entries point to it.
fn intern(bots: &mut AHashSet<Id>, bot_id: &str) -> Id {
    if let Some(bot) = bots.get(bot_id) {
        return bot.clone();
    }
    let bot: Id = Rc::from(bot_id);
    bots.insert(bot.clone());
    bot
}

/// `DecisionCore._horizon`: the messages at or below it can neither count nor come again.
fn horizon(clock: i64, window: i64, idle_delay: i64, last_ts: i64) -> i64 {
    let since = clock - window;
    (since - 1).min(last_ts.max(since) + idle_delay - window)
}

enum HeaderClock {
    Absent,
    At(i64),
    Odd, // not plain digits, or past MAX_TS_MS: Python's ``stream_clock`` reads it, or says what is wrong
}

/// The first header named ``name``, as ``agents/engine.py``'s ``stream_clock`` reads it.
fn header_clock(headers: &Bound<'_, PyAny>, name: &str) -> PyResult<HeaderClock> {
    if headers.is_none() {
        return Ok(HeaderClock::Absent);
    }
    for header in headers.try_iter()? {
        let header = header?;
        let key = header.get_item(0)?;
        if key.downcast::<pyo3::types::PyString>().map_or(true, |key| key.to_str().map_or(true, |key| key != name)) {
            continue;
        }
        let value = header.get_item(1)?;
        let Ok(bytes) = value.downcast::<PyBytes>() else { return Ok(HeaderClock::Odd) };
        let digits = bytes.as_bytes();
        if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
            return Ok(HeaderClock::Odd);
        }
        let clock = digits.iter().fold(0i64, |clock, digit| clock * 10 + (digit - b'0') as i64);
        return Ok(if clock <= MAX_TS_MS { HeaderClock::At(clock) } else { HeaderClock::Odd });
    }
    Ok(HeaderClock::Absent)
}

/// `DecisionCore._schedule`, on the fields it touches.
fn schedule(heap: &mut BinaryHeap<Reverse<(i64, Id, Id)>>, next_due: &mut i64, user_id: &Id, bot_id: &Id,
            pair: &mut Pair, time: i64) {
    if pair.queued.is_none_or(|queued| time < queued) {
        pair.queued = Some(time);
        heap.push(Reverse((time, user_id.clone(), bot_id.clone())));
        *next_due = (*next_due).min(time);
    }
}

#[pyclass(unsendable)]
pub struct NativeCore {
    wall: bool,
    window: i64,
    idle_delay: i64,
    messaging_window: i64,
    min_inbound: i64,
    distress_cooloff: i64,
    unknown_age_deny: bool,
    holdout: f64,
    cap_day: i64,
    cap_week: i64,
    #[pyo3(get, set)]
    clock: i64,
    kills: Kills,
    /// Boxed: the map's slots stay small (a slot per user, and hashbrown keeps spare ones).
    users: AHashMap<Id, Box<User>>,
    bots: AHashSet<Id>,
    pairs: i64,
    heap: BinaryHeap<Reverse<(i64, Id, Id)>>,
    next_due: i64,
    requests: Vec<Request>,
    decisions: Vec<Decision>,
    erased: Vec<Id>,
    dirty: AHashSet<Id>,
    duplicates_by_app: [i64; 3],
    too_old: i64,
    stop_words: i64,
    /// `text_check(text) -> (stop word: bool, distress: bool)`, Python's own detectors.
    text_check: PyObject,
    /// `quiet_end(due, tz) -> int | None`, or None when there are no quiet hours.
    quiet_end: Option<PyObject>,
    /// The stop words, folded: an ASCII text folds to its lower case, so one whose
    /// lower case is none of them is no stop word.
    stop_word_set: AHashSet<String>,
    /// The distress phrases, folded, when the classifier is the phrase list: a text in
    /// which none occurs cannot match, and is not handed over.
    phrases: Option<AhoCorasick>,
}

impl NativeCore {
    fn intern_user(&mut self, user_id: &str) -> Id {
        match self.users.get_key_value(user_id) {
            Some((id, _)) => id.clone(),
            None => Rc::from(user_id),
        }
    }


    /// Whether a text could be a stop word or show distress: else Python is not asked.
    fn may_matter(&self, text: &str) -> bool {
        let stripped = text.trim_matches(TRAILING);
        if !stripped.is_empty() && stripped.chars().count() <= 16
            && (!stripped.is_ascii() || self.stop_word_set.contains(&stripped.to_ascii_lowercase()))
        {
            return true;
        }
        match &self.phrases {
            Some(phrases) if text.is_ascii() => phrases.is_match(&text.to_ascii_lowercase()),
            _ => !text.is_empty(),
        }
    }

    /// `DecisionCore.advance`.
    fn advance_to(&mut self, py: Python<'_>, to: Option<i64>, inclusive: bool) -> PyResult<()> {
        if let Some(to) = to {
            self.clock = self.clock.max(to);
        }
        while self.next_due < self.clock || (inclusive && self.next_due == self.clock) {
            let Reverse((time, user_id, bot_id)) = self.heap.pop().expect("next_due comes from the heap");
            self.next_due = self.heap.peek().map_or(NEVER, |Reverse((earliest, _, _))| *earliest);
            let Some(user) = self.users.get_mut(&user_id) else { continue };
            let Some(index) = user.pair_index(&bot_id) else { continue };
            let pair = &mut user.pairs[index].1;
            if pair.queued != Some(time) {
                continue; // queued again since
            }
            pair.queued = None;
            let due = pair.due;
            let next_time = due.unwrap_or_else(|| expiry(pair.last_ts, self.window, self.idle_delay));
            if next_time > time {
                schedule(&mut self.heap, &mut self.next_due, &user_id, &bot_id, pair, next_time);
            } else if due.is_some() {
                self.decide(py, &user_id, &bot_id, index, time)?;
            } else {
                self.expire(&user_id, index, time);
            }
        }
        Ok(())
    }

    /// `DecisionCore._decide`.
    fn decide(&mut self, py: Python<'_>, user_id: &Id, bot_id: &Id, index: usize, due: i64) -> PyResult<()> {
        let user = &self.users[user_id];
        let send_at: Option<i64> = match &self.quiet_end {
            Some(quiet_end) => quiet_end.call1(py, (due, user.rare().tz.as_deref()))?.extract(py)?,
            None => None,
        };
        let pair = &user.pairs[index].1;
        let inbound_in_window = pair.inbound_between(due - self.window, due);
        if let Some(send_at) = send_at {
            if 0 <= pair.last_inbound_ts && send_at - pair.last_inbound_ts <= self.messaging_window {
                let user = self.users.get_mut(user_id).unwrap();
                let pair = &mut user.pairs[index].1;
                pair.due = Some(send_at);
                schedule(&mut self.heap, &mut self.next_due, user_id, bot_id, pair, send_at);
                let held_back = ("quiet_hours", true, "held back to the end of quiet hours".to_owned());
                self.record(user_id, bot_id, index, due, send_at, "deferred", None, inbound_in_window, vec![held_back]);
                return Ok(());
            }
        }
        let app = APP_CODES[pair.app as usize];
        let mut checks = vec![
            self.check_engaged(inbound_in_window),
            if pair.emitted_at.is_none_or(|emitted| pair.last_inbound_ts > emitted) {
                passed("one_per_silence")
            } else {
                failed("one_per_silence", "a follow-up was already sent since the last inbound message")
            },
            self.check_messaging_window(pair, due),
            match self.kills.stops(bot_id, app) {
                None => passed("kill_switch"),
                Some(why) => ("kill_switch", false, why),
            },
            if user.opted_out(bot_id) { failed("opt_out", "the user opted out") } else { passed("opt_out") },
            if user.minor == Some(true) {
                failed("age", "the user is a minor")
            } else if user.age_stops(self.unknown_age_deny) {
                failed("age", "the user's age is unknown and unknown_age is deny")
            } else {
                passed("age")
            },
            if due < user.distress_until {
                failed("distress", "signs of distress, cooling off")
            } else {
                passed("distress")
            },
            if in_holdout(user_id, bot_id, self.holdout) {
                failed("holdout", "pair is in the holdout")
            } else {
                passed("holdout")
            },
            if send_at.is_none() {
                passed("quiet_hours")
            } else {
                failed("quiet_hours", "quiet hours end outside the messaging window")
            },
        ];
        checks.push(self.check_cap(user_id, due));
        let stopped_by = checks.iter().find(|check| !check.1).map(|check| check.0);
        let (clock, window, idle_delay) = (self.clock, self.window, self.idle_delay);
        let user = self.users.get_mut(user_id).unwrap();
        if stopped_by.is_none() {
            let at = user.sends.partition_point(|ts| *ts <= due);
            user.sends.insert(at, due);
        }
        let pair = &mut user.pairs[index].1;
        pair.due = None;
        if stopped_by.is_none() {
            pair.emitted_at = Some(due);
        }
        schedule(&mut self.heap, &mut self.next_due, user_id, bot_id, pair, expiry(pair.last_ts, window, idle_delay));
        pair.forget_until(horizon(clock, window, idle_delay, pair.last_ts));
        let send_at = match send_at {
            Some(send_at) if send_at != 0 => send_at, // `send_at or due`
            _ => due,
        };
        let outcome = if stopped_by.is_some() { "suppressed" } else { "emitted" };
        let followup_id = self.record(user_id, bot_id, index, due, send_at, outcome, stopped_by, inbound_in_window, checks);
        if stopped_by.is_none() {
            let pair = &self.users[user_id].pairs[index].1;
            self.requests.push(Request {
                followup_id, user_id: user_id.clone(), bot_id: bot_id.clone(), app: pair.app, due,
                last_inbound_ts: pair.last_inbound_ts, inbound_in_window,
            });
        }
        Ok(())
    }

    /// `DecisionCore._record`; the follow-up's id.
    #[allow(clippy::too_many_arguments)]
    fn record(&mut self, user_id: &Id, bot_id: &Id, index: usize, due: i64, send_at: i64, outcome: &'static str,
              stopped_by: Option<&'static str>, inbound_in_window: i64, checks: Vec<CheckOut>) -> String {
        let pair = &self.users[user_id].pairs[index].1;
        let id = followup_id(user_id, bot_id, pair.last_inbound_ts, pair.last_inbound_key);
        self.decisions.push(Decision {
            followup_id: id.clone(), user_id: user_id.clone(), bot_id: bot_id.clone(), app: pair.app, due, send_at,
            clock: self.clock, outcome, failed: stopped_by, inbound_in_window,
            last_inbound_ts: pair.last_inbound_ts.max(0), checks,
        });
        self.dirty.insert(user_id.clone());
        id
    }

    fn check_engaged(&self, inbound_in_window: i64) -> CheckOut {
        let detail = format!("{inbound_in_window} of {} inbound messages in the window", self.min_inbound);
        ("engaged", inbound_in_window >= self.min_inbound, detail)
    }

    fn check_messaging_window(&self, pair: &Pair, due: i64) -> CheckOut {
        if pair.last_inbound_ts < 0 {
            return failed("messaging_window", "the user never wrote");
        }
        let waited = due - pair.last_inbound_ts;
        let detail = format!("{} min after the last inbound message, limit {} min", waited.div_euclid(60_000),
                             self.messaging_window.div_euclid(60_000));
        ("messaging_window", waited <= self.messaging_window, detail)
    }

    /// `DecisionCore._check_cap`.
    fn check_cap(&mut self, user_id: &Id, at: i64) -> CheckOut {
        let sends = &mut self.users.get_mut(user_id).unwrap().sends;
        prune_sends(sends, at, self.clock, self.window);
        for (span, cap, name) in [(DAY_MS, self.cap_day, "24 hours"), (WEEK_MS, self.cap_week, "7 days")] {
            if cap != 0 && crowded(sends, at, span, cap) {
                return ("user_cap", false, format!("{cap} follow-ups to this user already within {name} of it"));
            }
        }
        passed("user_cap")
    }

    /// `DecisionCore._expire`.
    fn expire(&mut self, user_id: &Id, index: usize, time: i64) {
        let mut user = self.users.remove(user_id).unwrap();
        user.pairs.remove(index);
        self.pairs -= 1;
        prune_sends(&mut user.sends, time, self.clock, self.window);
        if !user.forgettable(self.clock, self.window, self.idle_delay) {
            self.users.insert(user_id.clone(), user);
        }
        self.dirty.insert(user_id.clone());
    }

    /// `DecisionCore._apply_message`.
    fn apply_message(&mut self, py: Python<'_>, message: &Message) -> PyResult<()> {
        let ts = message.ts;
        if ts < self.clock - self.window {
            self.too_old += 1;
            return Ok(());
        }
        let user_id = self.intern_user(&message.user_id);
        let bot_id = intern(&mut self.bots, &message.bot_id);
        let app = APPS[message.app as usize];
        let key = event_key(app, &message.event_id);
        let may_matter = message.inbound && self.may_matter(&message.text);
        let user = self.users.entry(user_id.clone()).or_insert_with(|| Box::new(User::new()));
        let index = match user.pair_index(&bot_id) {
            Some(index) => index,
            None => {
                user.pairs.reserve_exact(1); // most users talk to one bot: no room for four
                user.pairs.push((bot_id.clone(), Pair::new()));
                self.pairs += 1;
                user.pairs.len() - 1
            }
        };
        let pair = &mut user.pairs[index].1;
        if !pair.add(ts, key, message.inbound) {
            self.duplicates_by_app[message.app as usize] += 1;
            return Ok(());
        }
        let app_code = message.app + 1;
        if message.inbound {
            if ts >= pair.last_inbound_ts {
                pair.last_inbound_ts = ts;
                pair.last_inbound_key = key;
                pair.app = app_code;
            }
        } else if pair.last_inbound_ts < 0 && ts >= pair.last_ts {
            pair.app = app_code;
        }
        if ts > pair.last_ts {
            pair.last_ts = ts;
            let due = ts + self.idle_delay;
            pair.due = Some(due);
            if pair.queued.is_none_or(|queued| due < queued) {
                schedule(&mut self.heap, &mut self.next_due, &user_id, &bot_id, pair, due);
            }
        }
        pair.forget_until(horizon(self.clock, self.window, self.idle_delay, pair.last_ts));
        if may_matter {
            let (stop, distress): (bool, bool) = self.text_check.call1(py, (&*message.text,))?.extract(py)?;
            let user = self.users.get_mut(&user_id).unwrap();
            if stop && user.stop_word(&bot_id, ts) {
                self.stop_words += 1;
            }
            if distress {
                user.distressed(ts, self.distress_cooloff);
            }
        }
        self.dirty.insert(user_id);
        Ok(())
    }

    fn forget(&mut self, user_id: &str) {
        if let Some(user) = self.users.remove(user_id) {
            self.pairs -= user.pairs.len() as i64;
        }
    }

    fn user_for_control(&mut self, user_id: &str) -> Id {
        let id = self.intern_user(user_id);
        self.users.entry(id.clone()).or_insert_with(|| Box::new(User::new()));
        self.dirty.insert(id.clone());
        id
    }
}

type RequestOut = (String, String, String, &'static str, i64, i64, i64);
type Counts = (Vec<(&'static str, i64)>, i64, i64);

impl NativeCore {
    /// What the steps since the last drain produced, taken out (requests and ids as Python
    /// will see them; decisions as they are, for ``drain`` or ``drain_encoded``).
    fn take_outputs(&mut self) -> (Vec<RequestOut>, Vec<Decision>, Vec<String>, Vec<String>, Counts) {
        let requests: Vec<_> = self.requests.drain(..).map(|r| {
            (r.followup_id, r.user_id.to_string(), r.bot_id.to_string(), APP_CODES[r.app as usize], r.due,
             r.last_inbound_ts, r.inbound_in_window)
        }).collect();
        let decisions: Vec<Decision> = self.decisions.drain(..).collect();
        let erased: Vec<String> = self.erased.drain(..).map(|id| id.to_string()).collect();
        let dirty: Vec<String> = self.dirty.drain().map(|id| id.to_string()).collect();
        let duplicates: Vec<(&'static str, i64)> = APPS.iter().zip(self.duplicates_by_app).filter(|(_, n)| *n > 0)
            .map(|(app, n)| (*app, n)).collect();
        let counts = (duplicates, self.too_old, self.stop_words);
        self.duplicates_by_app = [0; 3];
        self.too_old = 0;
        self.stop_words = 0;
        (requests, decisions, erased, dirty, counts)
    }
}

#[pymethods]
impl NativeCore {
    /// `rules` is `(wall, window, idle_delay, messaging_window, min_inbound,
    /// distress_cooloff, unknown_age_deny, holdout, user_cap_day, user_cap_week)`.
    #[new]
    #[pyo3(signature = (rules, text_check, quiet_end, stop_words, phrases))]
    fn new(rules: (bool, i64, i64, i64, i64, i64, bool, f64, i64, i64), text_check: PyObject,
           quiet_end: Option<PyObject>, stop_words: Vec<String>, phrases: Option<Vec<String>>) -> PyResult<Self> {
        let (wall, window, idle_delay, messaging_window, min_inbound, distress_cooloff, unknown_age_deny, holdout,
             cap_day, cap_week) = rules;
        let phrases = match phrases {
            Some(phrases) => Some(AhoCorasick::new(phrases).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?),
            None => None,
        };
        Ok(NativeCore {
            wall, window, idle_delay, messaging_window, min_inbound, distress_cooloff, unknown_age_deny, holdout,
            cap_day, cap_week, clock: -1, kills: Kills::default(), users: AHashMap::new(), bots: AHashSet::new(),
            pairs: 0, heap: BinaryHeap::new(), next_due: NEVER, requests: Vec::new(), decisions: Vec::new(),
            erased: Vec::new(), dirty: AHashSet::new(), duplicates_by_app: [0; 3], too_old: 0, stop_words: 0,
            text_check, quiet_end, stop_word_set: stop_words.into_iter().collect(), phrases,
        })
    }

    /// One record's value as the engine reads it: a message event of the common shape is
    /// applied (its app's index in APPS returned); anything else returns 3 and changes
    /// nothing but the clock: Python reads it. ``stream_clock`` is the feeder's header.
    #[pyo3(signature = (data, stream_clock, now))]
    fn feed_json(&mut self, py: Python<'_>, data: &[u8], stream_clock: Option<i64>, now: Option<i64>) -> PyResult<i32> {
        if stream_clock.is_some() {
            self.advance_to(py, stream_clock, false)?;
        }
        let Some(message) = message::read(data) else { return Ok(FALLBACK) };
        let target = match (self.wall, now) {
            (false, _) => message.ts,
            (true, Some(now)) if message.ts <= now + 5 * 60_000 => now,
            (true, _) => return Ok(FALLBACK), // Python says what is wrong
        };
        self.message_at(py, target, &message)?;
        Ok(message.app as i32)
    }

    /// A batch of Kafka records (anything with ``value`` and ``headers``) from ``start``,
    /// each as ``feed_json`` with the stream clock of its ``clock_header`` (event mode),
    /// until one needs Python: a value that is not the common message shape, an empty
    /// value without a clock, a clock header that is not plain digits. Returns that
    /// record's index (``len(records)`` when none did) and the message events applied per app.
    #[pyo3(signature = (records, start, now, clock_header))]
    fn feed_records(&mut self, py: Python<'_>, records: &Bound<'_, PyList>, start: usize, now: Option<i64>,
                    clock_header: Option<&str>) -> PyResult<(usize, [i64; 3])> {
        let mut applied = [0i64; 3];
        for index in start..records.len() {
            let record = records.get_item(index)?;
            let stream_clock = match clock_header {
                Some(name) => match header_clock(&record.getattr(intern!(py, "headers"))?, name)? {
                    HeaderClock::Absent => None,
                    HeaderClock::At(clock) => Some(clock),
                    HeaderClock::Odd => return Ok((index, applied)),
                },
                None => None,
            };
            let value = record.getattr(intern!(py, "value"))?;
            let data: &[u8] = if value.is_none() { b"" } else { value.downcast::<PyBytes>()?.as_bytes() };
            if data.is_empty() {
                if stream_clock.is_none() {
                    return Ok((index, applied)); // counted by Python
                }
                self.advance_to(py, stream_clock, false)?;
                continue;
            }
            match self.feed_json(py, data, stream_clock, now)? {
                FALLBACK => return Ok((index, applied)),
                app => applied[app as usize] += 1,
            }
        }
        Ok((records.len(), applied))
    }

    /// A message event Python read: ``feed``'s clock step, then the message.
    #[allow(clippy::too_many_arguments)]
    fn feed_message(&mut self, py: Python<'_>, target: i64, event_id: &str, app: usize, user_id: &str, bot_id: &str,
                    inbound: bool, ts: i64, text: &str) -> PyResult<()> {
        let message = Message {
            event_id: event_id.into(), app: app as u8, user_id: user_id.into(), bot_id: bot_id.into(), inbound, ts,
            text: text.into(),
        };
        self.message_at(py, target, &message)
    }

    #[pyo3(signature = (to, inclusive))]
    fn advance(&mut self, py: Python<'_>, to: Option<i64>, inclusive: bool) -> PyResult<()> {
        self.advance_to(py, to, inclusive)
    }

    fn set_kills(&mut self, everything: bool, bots: Vec<String>, apps: Vec<String>) {
        self.kills = Kills { everything, bots: bots.into_iter().collect(), apps: apps.into_iter().collect() };
    }

    fn erase(&mut self, user_id: &str) {
        self.forget(user_id);
        let id = self.intern_user(user_id);
        self.erased.push(id.clone());
        self.dirty.insert(id);
    }

    #[pyo3(signature = (user_id, tz, minor))]
    fn profile(&mut self, user_id: &str, tz: Option<String>, minor: Option<bool>) {
        let id = self.user_for_control(user_id);
        let user = self.users.get_mut(&id).unwrap();
        if tz.is_some() || user.rare().tz.is_some() {
            user.rare_mut().tz = tz;
        }
        user.minor = minor;
    }

    #[pyo3(signature = (user_id, bot_id))]
    fn opt_out(&mut self, user_id: &str, bot_id: Option<&str>) {
        let id = self.user_for_control(user_id);
        self.users.get_mut(&id).unwrap().opt_out(bot_id);
    }

    #[pyo3(signature = (user_id, bot_id))]
    fn opt_in(&mut self, user_id: &str, bot_id: Option<&str>) {
        let id = self.user_for_control(user_id);
        let clock = self.clock;
        self.users.get_mut(&id).unwrap().opt_in(bot_id, clock);
    }

    /// What the steps since the last drain produced: requests and decisions as tuples,
    /// erased and changed user ids, duplicates per app, too-old messages and stop words.
    #[allow(clippy::type_complexity)]
    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (requests, decisions, erased, dirty, counts) = self.take_outputs();
        let decisions: Vec<_> = decisions.into_iter().map(|d| {
            (d.followup_id, d.user_id.to_string(), d.bot_id.to_string(), APP_CODES[d.app as usize], d.due, d.send_at,
             d.clock, d.outcome, d.failed, d.inbound_in_window, d.last_inbound_ts, d.checks)
        }).collect();
        (requests, decisions, erased, dirty, counts).into_pyobject(py).map(|tuple| tuple.into_any())
    }

    /// ``drain`` with each decision encoded here (``DecisionRecord.to_json``'s bytes) as
    /// (json, user_id, bot_id, outcome, stopped_by, due_ts): what the engine publishes and
    /// counts, without a Python record per decision and ten per check.
    fn drain_encoded<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (requests, decisions, erased, dirty, counts) = self.take_outputs();
        let mut encoded = Vec::with_capacity(decisions.len());
        for d in decisions {
            let json = d.to_json().map_err(pyo3::exceptions::PyValueError::new_err)?;
            encoded.push((PyBytes::new(py, &json), d.user_id.to_string(), d.bot_id.to_string(), d.outcome, d.failed, d.due));
        }
        (requests, encoded, erased, dirty, counts).into_pyobject(py).map(|tuple| tuple.into_any())
    }

    /// The user's ``engine.state`` value (``state.changelog_value``), or None if not held.
    fn changelog_value<'py>(&self, py: Python<'py>, user_id: &str) -> Option<Bound<'py, PyBytes>> {
        let user = self.users.get(user_id)?;
        let mut out = vec![PACKED_FORMAT];
        pack_user(&mut out, user, false);
        Some(PyBytes::new(py, &out))
    }

    /// ``state.pack_user`` of the user, due-heap entries included, or None if not held.
    fn packed<'py>(&self, py: Python<'py>, user_id: &str) -> Option<Bound<'py, PyBytes>> {
        let user = self.users.get(user_id)?;
        let mut out = Vec::new();
        pack_user(&mut out, user, true);
        Some(PyBytes::new(py, &out))
    }

    /// ``load_user`` from packed bytes (``pack_user(user, queue=False)``).
    fn load_packed(&mut self, user_id: &str, packed: &[u8]) -> PyResult<()> {
        self.forget(user_id);
        let bots = &mut self.bots;
        let mut user = unpack_user(packed, |bot| intern(bots, bot)).map_err(pyo3::exceptions::PyValueError::new_err)?;
        let id: Id = Rc::from(user_id);
        for (bot, pair) in user.pairs.iter_mut() {
            pair.queued = None;
            let time = pair.due.unwrap_or_else(|| expiry(pair.last_ts, self.window, self.idle_delay));
            schedule(&mut self.heap, &mut self.next_due, &id, bot, pair, time);
        }
        self.pairs += user.pairs.len() as i64;
        self.users.insert(id, Box::new(user));
        Ok(())
    }

    fn forget_user(&mut self, user_id: &str) {
        self.forget(user_id);
    }

    fn has_user(&self, user_id: &str) -> bool {
        self.users.contains_key(user_id)
    }

    fn pairs_tracked(&self) -> i64 {
        self.pairs
    }

    fn user_count(&self) -> usize {
        self.users.len()
    }
}

impl NativeCore {
    /// ``feed``'s step for a message: the clock first (and what it makes due), then the message.
    fn message_at(&mut self, py: Python<'_>, target: i64, message: &Message) -> PyResult<()> {
        if target > self.clock || self.next_due < self.clock {
            self.advance_to(py, Some(target), false)?;
        }
        self.apply_message(py, message)
    }
}
